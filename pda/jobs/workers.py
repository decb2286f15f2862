"""Which workers are alive: a heartbeat of our own, written by each worker's maintenance
thread, independent of RQ's (an RQ ``SimpleWorker`` writes none while a job runs, and an
idle one only every few minutes).

Keys (prefix ``pda:``):
- ``workers``          zset: worker name -> time of its last beat
- ``worker:{name}``    string: JSON about the worker (host, pid, state, current job,
                       models, device), expiring a few freshness windows after its beat

A worker counts as alive while its last beat is younger than the freshness window
(``PDA_WORKER_FRESH_SECONDS``, 30 s by default, three beats): a busy worker on a two-hour
job keeps beating from its maintenance thread, and a SIGKILLed one stops counting within
that window. Nothing here decides whether the API is ready; it only reports.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from .. import keys
from ..keys import WORKERS

#: beats older than this are dropped from the index (a worker that died long ago)
FORGET_SECONDS = 3600
info_key = keys.worker


class WorkerRegistry:
    def __init__(self, conn: redis.Redis, fresh_seconds: float = 30.0) -> None:
        self.r = conn
        self.fresh = fresh_seconds

    def beat(self, name: str, info: dict[str, Any], now: float | None = None) -> None:
        """Record that worker ``name`` is alive now, with what it is doing."""
        now = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(WORKERS, {name: now})
        pipe.set(info_key(name), json.dumps({**info, "name": name, "beat_at": now}),
                 ex=max(1, int(3 * self.fresh)))
        pipe.zremrangebyscore(WORKERS, 0, now - FORGET_SECONDS)
        pipe.execute()

    def leave(self, name: str) -> None:
        """A clean exit: stop counting this worker at once."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(WORKERS, name)
        pipe.delete(info_key(name))
        pipe.execute()

    def alive_count(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return int(self.r.zcount(WORKERS, now - self.fresh, "+inf"))

    def alive(self, now: float | None = None) -> list[dict[str, Any]]:
        """What each live worker last said about itself, freshest first."""
        now = time.time() if now is None else now
        names = [n.decode() for n in self.r.zrevrangebyscore(WORKERS, "+inf", now - self.fresh)]
        if not names:
            return []
        infos = self.r.mget([info_key(n) for n in names])
        return [json.loads(v) if v else {"name": n} for n, v in zip(names, infos, strict=True)]

    def summary(self) -> dict[str, Any]:
        """Live workers by state (busy, idle, loading) for /readyz and the metrics."""
        workers = self.alive()
        states = [w.get("state") for w in workers]
        return {"alive": len(workers), "busy": states.count("busy"),
                "idle": states.count("idle"), "loading": states.count("loading"),
                "fresh_seconds": self.fresh}
