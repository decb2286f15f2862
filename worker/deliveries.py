"""One attempt of a callback (the RQ job function ``TASKS["delivery"]``), and the thread
that runs them.

Each ``pda worker`` process runs its deliveries on a thread of their own
(:func:`start_delivery_thread`, started by worker/runner.py), never on the thread that
sweeps, so a slow receiver costs an explanation nothing. The outbox and its schedule are
:mod:`pda.jobs.deliveries`; the signature, the allow list and the request are
:mod:`pda.webhooks`. The event's ``data`` is the subject's resource as the API's GET
answers it (:mod:`service.resources`), rendered from the record as it was when the job
ended, once: every retry sends the same bytes.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import threading
import time
from typing import Any

from rq import Queue, SimpleWorker
from rq.timeouts import TimerDeathPenalty

from pda import webhooks
from pda.jobs.deliveries import Deliveries, queue_name
from pda.jobs.queue import connect
from pda.jobs.record import JobRecord
from pda.settings import Settings, get_settings
from service import resources

log = logging.getLogger("pda.callbacks")

_conns: dict[tuple, Any] = {}


def _outbox(settings: Settings) -> Deliveries:
    key = (settings.redis_url, settings.redis_timeout_seconds)
    if key not in _conns:
        _conns[key] = connect(settings)
    return Deliveries(_conns[key], settings)


def render(claimed: dict[str, Any]) -> str:
    """The event's body: ``{"type", "timestamp", "data"}``, ``data`` the resource."""
    data = claimed["data"]
    if claimed["subject"] == "explanation":  # the record as it ended -> the job resource
        data = resources.explanation(JobRecord.model_validate(data))
    return json.dumps({"type": claimed["type"], "timestamp": claimed["timestamp"],
                       "data": data}, separators=(",", ":"))


def deliver(delivery_id: str) -> str:
    """Attempt delivery ``delivery_id`` once, if it is due and no other attempt holds it."""
    settings = get_settings()
    outbox = _outbox(settings)
    claimed = outbox.claim(delivery_id)
    if claimed is None:
        return "skipped (delivered, given up, not due, or held by another attempt)"
    body = claimed.get("body") or render(claimed)
    status = error = None
    key = settings.webhook_key
    try:
        if key is None:
            raise webhooks.Refused("PDA_WEBHOOK_SECRET is not set on this worker: nothing "
                                   "to sign with")
        status = webhooks.post(claimed["url"], body.encode(),
                               webhooks.headers(key, claimed["id"], body.encode()),
                               settings.callback_allowlist, settings.callback_timeout_seconds)
    except webhooks.Refused as exc:
        error = f"refused: {exc}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
    outcome = outbox.record(claimed, status=status, error=error,
                            body=None if claimed.get("body") else body)
    log.info("callback %s (%s) to %s: %s -> %s", delivery_id, claimed["type"],
             claimed["url"], status or error, outcome)
    return outcome


class DeliveryWorker(SimpleWorker):
    """RQ's worker loop on a thread: Python lets only the main thread install signal
    handlers (RQ has no switch for it), and an attempt's timeout is a timer, not SIGALRM.
    The process's main worker keeps SIGTERM."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def start_delivery_thread(settings: Settings, name: str) -> threading.Thread:
    """The process's callback deliveries: an RQ worker of its own, in a daemon thread, on
    the queue ``PDA_QUEUE_NAME-callbacks`` (each attempt at most twice
    PDA_CALLBACK_TIMEOUT_SECONDS). Killed with the process: an attempt cut short is made
    again once its lease ends (pda.jobs.deliveries)."""
    conn = connect(settings)

    def run() -> None:
        for n in itertools.count():  # Redis away long enough to end RQ's loop: a new one
            worker = DeliveryWorker([Queue(queue_name(settings), connection=conn)],
                                    connection=conn,
                                    name=f"{name}-callbacks" + (f"-{n}" if n else ""))
            try:
                worker.work(logging_level=settings.log_level.upper(), with_scheduler=False)
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("callback deliveries: %s; again in 5 s", exc)
                time.sleep(5)

    thread = threading.Thread(target=run, name="pda-callbacks", daemon=True)
    thread.start()
    return thread
