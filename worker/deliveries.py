"""One attempt of a callback: the RQ job function ``TASKS["delivery"]``.

It runs on each worker's delivery thread (worker/runner.py), never on the thread that
sweeps, so a slow receiver costs an explanation nothing. The outbox and its schedule are
:mod:`pda.jobs.deliveries`; the signature, the allow list and the request are
:mod:`pda.webhooks`. The event's ``data`` is the subject's resource as the API's GET
answers it (:mod:`service.resources`), rendered from the record as it was when the job
ended, once: every retry sends the same bytes.
"""

from __future__ import annotations

import http.client
import json
import logging
from typing import Any

from pda import webhooks
from pda.jobs.deliveries import Deliveries
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
