"""``POST /v1/predictions`` through a worker: a short request on a high-priority queue,
answered while the caller waits.

The API stores the request (image, model, top, fit) for a minute, enqueues
``worker.tasks.run_prediction`` on the predict queue (workers take it before any
explanation attempt), and waits on a Redis list for the answer. No worker in time gives
the caller a 503 with Retry-After; the queued message stays until it expires (RQ's
``ttl``), so a queue-length scaler (KEDA) still sees the demand and starts a worker.

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

#: requests and answers expire this long after the caller's deadline
LINGER_SECONDS = 60


request_key = keys.prediction


def image_key(pred_id: str) -> str:
    return f"{request_key(pred_id)}:image"


def answer_key(pred_id: str) -> str:
    return f"{request_key(pred_id)}:answer"


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
    queue.enqueue("worker.tasks.run_prediction", pred_id, job_id=f"pred-{pred_id}",
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
    """The caller gave up: drop the queued message and the stored request."""
    try:
        job = queue.fetch_job(f"pred-{pred_id}")
        if job is not None and job.get_status(refresh=False) == "queued":
            job.cancel()
    except Exception:  # gone already
        pass
    conn.delete(request_key(pred_id), image_key(pred_id))


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
