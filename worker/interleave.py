"""``/v1/predictions`` answered by a worker, idle or in the middle of a sweep.

An idle worker takes a prediction from the predict queue through RQ's loop
(:func:`run_prediction`, that queue comes first). A worker busy on an explanation would
make the caller wait for the whole sweep, so the sweep's per-batch callback (the one that
writes progress and checks cancellation, :meth:`worker.attempt.Attempt.report`)
also calls :func:`between_batches`: every :data:`CHECK_EVERY` seconds it looks at the head
of the predict queue (one ``LRANGE``), takes off the predictions for a model this process
already holds (:func:`pda.jobs.predictions.claim`) and answers them with that model before
the next batch. Predictions for other models stay queued for a worker that holds them:
loading a model mid-sweep would stall the sweep for seconds and hold a second model's
memory beside the running job's.

Same thread, between batches, on purpose: a prediction thread beside the sweep would run
the model while a hidden-layer readout has its stop-hook registered on it (the torch
backend's ``eager_net``), and would share the sweep's CPU threads or GPU stream anyway.
The sweep's own randomness is seeded per block, so answering predictions between batches
leaves its map unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.timeouts import BaseTimeoutException

from pda.engine.device import resolve_device
from pda.engine.inputs import model_input
from pda.engine.setup import predict
from pda.errors import PDAError, PredictionFailedError
from pda.jobs import predictions
from pda.jobs.queue import connect, predict_queue
from pda.models.registry import get_model, loaded_models
from pda.problems import job_problem
from pda.settings import Settings, get_settings
from worker.announce import announce_model

log = logging.getLogger("pda.worker")

#: seconds between two looks at the predict queue during a sweep (one LRANGE each): the
#: most a prediction waits for a worker on top of the batch in flight
CHECK_EVERY = 0.1
#: at one batch boundary, answer predictions while less than this many seconds have gone
#: and fewer than PER_BREAK were answered: a burst cannot stall the sweep, the rest wait
#: one batch
BREAK_SECONDS = 0.5
PER_BREAK = 4


@dataclass
class Tally:
    """What interleaving cost this process: looks at the queue, predictions answered, and
    the seconds the sweep spent in :func:`between_batches` (looks included)."""

    checks: int = 0
    served: int = 0
    seconds: float = 0.0


tally = Tally()
_last_check = 0.0
_queues: dict[tuple, tuple[redis.Redis, Queue]] = {}


def _queue(settings: Settings) -> tuple[redis.Redis, Queue]:
    """One connection and predict queue per process and configuration."""
    key = (settings.redis_url, settings.redis_timeout_seconds, settings.queue_name)
    if key not in _queues:
        conn = connect(settings)
        _queues[key] = conn, predict_queue(settings, conn)
    return _queues[key]


def run_prediction(pred_id: str) -> str:
    """RQ job: answer one prediction (the API process is waiting for it), loading the
    model if this worker does not hold it yet."""
    settings = get_settings()
    conn, _ = _queue(settings)
    return _serve(conn, settings, pred_id)


def between_batches(settings: Settings) -> None:
    """Answer the queued predictions this worker can serve from memory, then return to
    the sweep. Never raises for a prediction's sake: a Redis hiccup or a failed prediction
    is the caller's 503 or error answer, not the sweep's failure."""
    global _last_check
    now = time.monotonic()
    if now - _last_check < CHECK_EVERY:
        return
    _last_check = now
    try:
        conn, queue = _queue(settings)
        held = set(loaded_models(resolve_device(settings.device), settings))
        for _ in range(PER_BREAK):
            taken = predictions.claim(conn, queue, held, limit=1)
            if not taken:
                break
            _serve(conn, settings, taken[0], outside_rq=True)
            if time.monotonic() - now > BREAK_SECONDS:
                break
    except redis.RedisError as exc:  # the sweep's own progress write deals with Redis
        log.debug("predictions between batches: %s", exc)
    finally:
        tally.checks += 1
        tally.seconds += time.monotonic() - now


def _serve(conn: redis.Redis, settings: Settings, pred_id: str, *,
           outside_rq: bool = False) -> str:
    """Compute and hand over one answer; ``outside_rq``: the message was claimed off the
    queue, so its RQ job is forgotten here as RQ forgets a finished one."""
    t = time.perf_counter()
    try:
        loaded = predictions.load(conn, pred_id)
        if loaded is None:
            return "gone"  # the caller gave up; its request expired
        request, data = loaded
        predictions.answer(conn, pred_id, _answer(conn, settings, request, data))
    finally:
        if outside_rq:
            predictions.done(conn, pred_id)
    if outside_rq:
        tally.served += 1
        log.info("prediction %s answered between sweep batches in %.3f s", pred_id,
                 time.perf_counter() - t)
    return "answered"


def _answer(conn: redis.Redis, settings: Settings, request: dict[str, Any],
            data: bytes) -> dict[str, Any]:
    """The answer body: the top classes, or an ``error`` problem for the API to return.
    A model this process holds answers at once (between batches :func:`claim` takes only
    those); another is loaded, by name only (RQ's loop, an idle worker)."""
    device = resolve_device(settings.device)
    try:
        model = loaded_models(device, settings).get(request["model"]) or get_model(
            request["model"], device, settings, allow_paths=False)
        announce_model(conn, model)
        x = model_input(data, model.input_size, request["fit"],
                        max_pixels=settings.max_image_pixels).x
        return {"model": model.name, "input_size": list(model.input_size),
                "prediction": predict(model, x.to(model.device), top=request["top"])}
    except PDAError as exc:  # found only here: a model file that does not load, ...
        return {"error": job_problem(exc)}
    except BaseTimeoutException:
        raise  # RQ's job timeout: the running job's, not this prediction's
    except Exception as exc:  # a bug: tell the caller now rather than after its timeout
        log.error("prediction failed", exc_info=exc)
        return {"error": job_problem(
            PredictionFailedError(f"{type(exc).__name__}: {exc}"[:300]))}

