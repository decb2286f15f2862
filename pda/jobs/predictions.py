"""``POST /v1/predictions`` through a worker: a short request on a high-priority queue,
answered while the caller waits.

The API stores the request (image, model, top, fit) for a minute, enqueues
``worker.interleave.run_prediction`` on the predict queue (workers take it before any
explanation attempt), and waits on a Redis list for the answer. No worker in time gives
the caller a 503 with Retry-After; the queued message stays until it expires (RQ's
``ttl``), so a queue-length scaler (KEDA) still sees the demand and starts a worker.

A worker busy on a sweep also takes messages off the queue between batches
(:func:`claim`, used by :mod:`worker.interleave`): for a model it holds, it removes the
message with ``LREM`` (atomic: the RQ loop of another worker pops with ``LPOP``, so each
message is taken exactly once), answers, and deletes the RQ job hash, which is what RQ
itself leaves after a job with ``result_ttl=0``. Such a message never enters RQ's started
registry, so a worker killed meanwhile leaves nothing behind but keys that expire.

Keys (prefix ``pda:``):
- ``pred:{id}``          string: the request, JSON
- ``pred:{id}:image``    string: the image bytes
- ``pred:{id}:answer``   list: the worker's answer, JSON (one element)
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from rq import Queue

from .. import keys
from .queue import TASKS, forget_message

#: requests and answers expire this long after the caller's deadline
LINGER_SECONDS = 60


request_key = keys.prediction


def image_key(pred_id: str) -> str:
    return f"{request_key(pred_id)}:image"


def answer_key(pred_id: str) -> str:
    return f"{request_key(pred_id)}:answer"


#: RQ job ids of predictions: ``pred-{id}``
RQ_PREFIX = "pred-"


def rq_id(pred_id: str) -> str:
    """The RQ job id of a prediction's message."""
    return f"{RQ_PREFIX}{pred_id}"


class NoAnswer(Exception):
    """No worker answered in time."""


def submit(conn: redis.Redis, queue: Queue, pred_id: str, request: dict[str, Any],
           image: bytes, timeout: float) -> None:
    """Store the request and put it on the predict queue (it expires unstarted after
    ``timeout`` plus a minute)."""
    ttl = int(timeout) + LINGER_SECONDS
    pipe = conn.pipeline()
    pipe.set(request_key(pred_id), json.dumps(request), ex=ttl)
    pipe.set(image_key(pred_id), image, ex=ttl)
    pipe.execute()
    queue.enqueue(TASKS["prediction"], pred_id, job_id=rq_id(pred_id),
                  ttl=ttl, result_ttl=0, failure_ttl=ttl, job_timeout=max(60, ttl),
                  description=f"prediction {pred_id}")


def wait(conn: redis.Redis, pred_id: str, timeout: float, poll: float = 2.0) -> dict[str, Any]:
    """The worker's answer, or :class:`NoAnswer` after ``timeout`` seconds. Waits in
    BLPOP slices shorter than the connection's socket timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        got = conn.blpop([answer_key(pred_id)], timeout=max(0.1, min(poll, left)))
        if got is not None:
            return json.loads(got[1])
    raise NoAnswer(pred_id)


def withdraw(conn: redis.Redis, queue: Queue, pred_id: str) -> None:
    """The caller gave up: drop the queued message (unless a worker took it meanwhile:
    ``LREM`` decides, as for :func:`claim`) and the stored request."""
    if conn.lrem(queue.key, 1, rq_id(pred_id)):
        forget_message(conn, rq_id(pred_id))
    conn.delete(request_key(pred_id), image_key(pred_id))


def claim(conn: redis.Redis, queue: Queue, models: set[str], limit: int,
          scan: int = 16) -> list[str]:
    """Take up to ``limit`` queued predictions for ``models`` off the queue, oldest first,
    for a worker to answer outside RQ's loop (then :func:`answer` and :func:`done`).

    Looks at the first ``scan`` messages only: one cheap round trip when the queue is
    empty, the usual case. A message for another model stays queued for a worker that
    holds it; one whose request is gone (the caller gave up) is dropped as RQ would."""
    ids = [i.decode() if isinstance(i, bytes) else i for i in conn.lrange(queue.key, 0, scan - 1)]
    ours = [i for i in ids if i.startswith(RQ_PREFIX)]
    if not ours:
        return []
    raw = conn.mget([request_key(i.removeprefix(RQ_PREFIX)) for i in ours])
    taken: list[str] = []
    for job_id, request in zip(ours, raw, strict=True):
        if len(taken) >= limit:
            break
        if request is None:
            if conn.lrem(queue.key, 1, job_id):
                forget_message(conn, job_id)
            continue
        try:
            model = json.loads(request)["model"]
        except (ValueError, KeyError, TypeError):
            continue  # not ours to judge: RQ's loop runs it and answers the error
        if model in models and conn.lrem(queue.key, 1, job_id):
            taken.append(job_id.removeprefix(RQ_PREFIX))
    return taken


def done(conn: redis.Redis, pred_id: str) -> None:
    """Forget the RQ job of a prediction answered outside RQ's loop (:func:`claim`)."""
    forget_message(conn, rq_id(pred_id))


def load(conn: redis.Redis, pred_id: str) -> tuple[dict[str, Any], bytes] | None:
    """The request and image (worker side), or None if the caller gave up meanwhile."""
    request, image = conn.mget([request_key(pred_id), image_key(pred_id)])
    if request is None or image is None:
        return None
    return json.loads(request), image


def answer(conn: redis.Redis, pred_id: str, body: dict[str, Any]) -> None:
    """Hand the answer to the waiting API process."""
    pipe = conn.pipeline()
    pipe.rpush(answer_key(pred_id), json.dumps(body))
    pipe.expire(answer_key(pred_id), LINGER_SECONDS)
    pipe.delete(request_key(pred_id), image_key(pred_id))
    pipe.execute()
