"""Jobs and their results in Redis: the one record the API and the workers share.

RQ only carries "run job X, attempt N" messages; the truth about a job (status,
progress, prediction, error, files) lives here, so a crashed worker, a retried message
or a canceled job can never make the status lie.

Keys (prefix ``pda:``):
- ``job:{id}``        hash: the job record (JSON-encoded values)
- ``job:{id}:image``  the uploaded image bytes
- ``job:{id}:files``  hash: result files (result.json, overlay-*.png, ...)
- ``running``         zset: running job id -> last heartbeat (for the reaper)
- ``queued``          zset: queued job id -> when it was queued (to find lost messages)
- ``open:{caller}``   zset: a caller's not-yet-ended job ids (the per-key queued cap);
                      only an index: whether a job counts is read from its record
- ``digest:{owner}:{sha}`` / ``idem:{owner}:{key}``: request dedup -> job id
- ``metrics:*``       cluster-wide job counters read by the API's /metrics
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import redis

from .keys import PREFIX

#: a finished job's record outlives its files by this long, so late readers get a
#: clear "expired" (410) instead of "unknown" (404)
TOMBSTONE_SECONDS = 7 * 24 * 3600
STATUSES = ("queued", "running", "finished", "failed", "canceled")
TERMINAL = ("finished", "failed", "canceled")
SWEEP_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


def is_full(exc: BaseException) -> bool:
    """Redis refused a write because it reached ``maxmemory`` (policy noeviction)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("OOM"))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: Redis away for a moment, or full until results expire."""
    return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError) \
        or is_full(exc)


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    """128 random bits, URL-safe: job ids cannot be guessed or enumerated."""
    return secrets.token_urlsafe(16)


class JobStore:
    def __init__(self, conn: redis.Redis, result_ttl: int = 24 * 3600) -> None:
        self.r = conn
        self.result_ttl = result_ttl

    # -- keys --------------------------------------------------------------------------
    @staticmethod
    def _job(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    # -- records -----------------------------------------------------------------------
    def create(self, record: dict[str, Any], image: bytes, live_seconds: int) -> None:
        """Store a new job and its image; both live ``live_seconds`` until it finishes."""
        key = self._job(record["id"])
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in record.items()})
        pipe.expire(key, live_seconds + TOMBSTONE_SECONDS)
        pipe.set(f"{key}:image", image, ex=live_seconds)
        pipe.zadd(f"{PREFIX}queued", {record["id"]: time.time()})
        pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self._job(job_id))
        if not raw:
            return None
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set fields of an existing record; False (nothing written) if it is gone."""
        return self._hset_existing(self._job(job_id), fields)

    def _hset_existing(self, key: str, fields: dict[str, Any],
                       zadd: tuple[str, str] | None = None) -> bool:
        """HSET only if ``key`` still exists: a worker's write must never re-create a
        partial record, without a TTL, for a job whose record Redis lost (a restart
        without persistence, a flush). Optionally refreshes ``zadd`` = (zset, member)."""
        mapping = {k: json.dumps(v) for k, v in fields.items()}

        def write(pipe: redis.client.Pipeline) -> bool:
            if not pipe.exists(key):
                return False
            pipe.multi()
            pipe.hset(key, mapping=mapping)
            if zadd is not None:
                pipe.zadd(zadd[0], {zadd[1]: time.time()}, xx=True)
            return True

        return self.r.transaction(write, key, value_from_callable=True)

    def field(self, job_id: str, name: str) -> Any:
        v = self.r.hget(self._job(job_id), name)
        return None if v is None else json.loads(v)

    def fields(self, job_id: str, *names: str) -> list[Any]:
        return [None if v is None else json.loads(v)
                for v in self.r.hmget(self._job(job_id), names)]

    def image(self, job_id: str) -> bytes | None:
        return self.r.get(f"{self._job(job_id)}:image")

    # -- lifecycle -----------------------------------------------------------------------
    def _transition(self, job_id: str, from_status: tuple[str, ...], attempt: int,
                    fields: dict[str, Any], *, running: bool) -> bool:
        """Set ``fields`` if the job is in ``from_status`` at ``attempt``; True if done.

        Optimistic locking on the record makes every hand-over atomic: of two workers
        holding messages for the same attempt only one starts it, and a requeue never
        revives a job that was canceled or taken over meanwhile.
        """
        key = self._job(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    status, att = pipe.hmget(key, "status", "attempt")
                    if (status is None or json.loads(status) not in from_status
                            or json.loads(att or "1") != attempt):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})
                    if running:
                        pipe.zadd(f"{PREFIX}running", {job_id: time.time()})
                        pipe.zrem(f"{PREFIX}queued", job_id)
                    else:
                        pipe.zrem(f"{PREFIX}running", job_id)
                        pipe.zadd(f"{PREFIX}queued", {job_id: time.time()})
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def mark_running(self, job_id: str, worker: str, attempt: int) -> bool:
        """Claim a queued job for ``attempt``; False if it is not (any more) that attempt."""
        return self._transition(job_id, ("queued",), attempt, {
            "status": "running", "started_at": now_iso(), "worker": worker,
            "heartbeat_at": time.time()}, running=True)

    def heartbeat(self, job_id: str) -> None:
        self.r.zadd(f"{PREFIX}running", {job_id: time.time()}, xx=True)

    def set_progress(self, job_id: str, done: int, total: int) -> bool:
        """Progress and a heartbeat; False if the record is gone (nothing written)."""
        return self._hset_existing(
            self._job(job_id),
            {"progress_done": done, "progress_total": total, "heartbeat_at": time.time()},
            zadd=(f"{PREFIX}running", job_id))

    def finish(self, job_id: str, files: dict[str, bytes], attempt: int | None = None,
               **fields: Any) -> bool:
        """Store the results and mark the job finished, unless it was canceled meanwhile.

        Optimistic locking on the record: a DELETE that lands between the last progress
        check and here wins, and the results are not stored; so does a newer attempt
        (this worker was taken for dead and the job rerun elsewhere).
        """
        key = self._job(job_id)
        expires = time.time() + self.result_ttl
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    status, att = pipe.hmget(key, "status", "attempt")
                    if status is None or json.loads(status) != "running" or (
                            attempt is not None and json.loads(att or "1") != attempt):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(f"{key}:files", mapping=files)
                    pipe.expire(f"{key}:files", self.result_ttl)
                    pipe.delete(f"{key}:image")  # the results keep a display copy
                    pipe.hset(key, mapping={k: json.dumps(v) for k, v in {
                        "status": "finished", "finished_at": now_iso(),
                        "expires_at": now_iso(expires), "files": sorted(files),
                        **fields}.items()})
                    pipe.expire(key, self.result_ttl + TOMBSTONE_SECONDS)
                    pipe.zrem(f"{PREFIX}running", job_id)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def end(self, job_id: str, status: str, **fields: Any) -> bool:
        """Failed or canceled: drop image and files, keep the record as a tombstone.

        A record Redis has lost is not re-created (False): a tombstone without its
        creation fields would answer for a job nobody can see."""
        key = self._job(job_id)
        mapping = {k: json.dumps(v) for k, v in {
            "status": status, "finished_at": now_iso(),
            "expires_at": now_iso(time.time() + self.result_ttl), **fields}.items()}

        def write(pipe: redis.client.Pipeline) -> bool:
            exists = pipe.exists(key)
            pipe.multi()
            if exists:
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, self.result_ttl + TOMBSTONE_SECONDS)
            pipe.delete(f"{key}:files", f"{key}:image")
            pipe.zrem(f"{PREFIX}running", job_id)
            pipe.zrem(f"{PREFIX}queued", job_id)
            return bool(exists)

        return self.r.transaction(write, key, value_from_callable=True)

    def requeued(self, job_id: str, attempt: int) -> bool:
        """Back to ``queued`` as ``attempt``, if it still is ``attempt - 1`` and not ended."""
        return self._transition(job_id, ("running", "queued"), attempt - 1, {
            "status": "queued", "attempt": attempt, "progress_done": 0,
            "started_at": None, "worker": None}, running=False)

    def claim_stale(self, older_than: float) -> list[str]:
        """Running jobs whose heartbeat stopped: each is returned to exactly one caller."""
        ids = self.r.zrangebyscore(f"{PREFIX}running", 0, time.time() - older_than)
        return [i.decode() for i in ids if self.r.zrem(f"{PREFIX}running", i) == 1]

    def queued_since(self, older_than: float) -> list[str]:
        """Jobs queued at least ``older_than`` seconds ago (checked for a lost message)."""
        ids = self.r.zrangebyscore(f"{PREFIX}queued", 0, time.time() - older_than)
        return [i.decode() for i in ids]

    def unqueue(self, job_id: str) -> None:
        self.r.zrem(f"{PREFIX}queued", job_id)

    def unindex(self, job_id: str) -> None:
        """Forget a job in the running and queued indexes (its record is gone)."""
        pipe = self.r.pipeline()
        pipe.zrem(f"{PREFIX}running", job_id)
        pipe.zrem(f"{PREFIX}queued", job_id)
        pipe.execute()

    def claim_repair(self, job_id: str, attempt: int, ttl: int = 3600) -> bool:
        """True for exactly one caller per (job, attempt): who may re-enqueue it."""
        return bool(self.r.set(f"{PREFIX}repair:{job_id}:{attempt}", 1, ex=ttl, nx=True))

    # -- per-caller queued cap -------------------------------------------------------------
    def reserve(self, caller: str, job_id: str, cap: int, grace: float = 60.0) -> int | None:
        """Count ``job_id`` against ``caller``'s queued jobs unless ``cap`` are queued.

        Returns how many were queued before, or None (nothing reserved) when at the cap.
        The index only lists candidates; each counts while its record says ``queued`` (so
        cancel, finish, fail and requeue can never make the count drift), or for ``grace``
        seconds after being reserved while its record is being written. Watching the
        index makes concurrent reservations by the same caller (any API replica) exact.
        """
        key = f"{PREFIX}open:{caller}"
        now = time.time()
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    queued, ended = self._classify(pipe.zrange(key, 0, -1, withscores=True),
                                                   now, grace)
                    if len(queued) >= cap:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    if ended:
                        pipe.zrem(key, *ended)
                    pipe.zadd(key, {job_id: now})
                    pipe.expire(key, TOMBSTONE_SECONDS)
                    pipe.execute()
                    return len(queued)
                except redis.WatchError:
                    continue

    def release(self, caller: str, job_id: str) -> None:
        self.r.zrem(f"{PREFIX}open:{caller}", job_id)

    def queued_of(self, caller: str, grace: float = 60.0) -> list[str]:
        """The caller's jobs that count against the cap now (derived from their records)."""
        members = self.r.zrange(f"{PREFIX}open:{caller}", 0, -1, withscores=True)
        return self._classify(members, time.time(), grace)[0]

    def _classify(self, members: list[tuple[bytes, float]], now: float,
                  grace: float) -> tuple[list[str], list[str]]:
        """(queued, ended) among index members; running ones are neither (they may requeue)."""
        if not members:
            return [], []
        pipe = self.r.pipeline(transaction=False)
        for m, _ in members:
            pipe.hget(self._job(m.decode()), "status")
        queued, ended = [], []
        for (m, since), status in zip(members, pipe.execute(), strict=True):
            job_id = m.decode()
            if status is None:  # being created (counts), or never written (forgotten)
                (queued if now - since < grace else ended).append(job_id)
            elif json.loads(status) == "queued":
                queued.append(job_id)
            elif json.loads(status) in TERMINAL:
                ended.append(job_id)
        return queued, ended

    def running_count(self) -> int:
        return int(self.r.zcard(f"{PREFIX}running"))

    # -- files -------------------------------------------------------------------------
    def file(self, job_id: str, name: str) -> bytes | None:
        return self.r.hget(f"{self._job(job_id)}:files", name)

    # -- dedup -------------------------------------------------------------------------
    def lookup(self, kind: str, owner: str, key: str) -> str | None:
        v = self.r.get(f"{PREFIX}{kind}:{owner}:{key}")
        return v.decode() if v else None

    def remember(self, kind: str, owner: str, key: str, job_id: str, ttl: int) -> bool:
        """Point ``kind:owner:key`` at ``job_id`` unless already set; True if set now."""
        return bool(self.r.set(f"{PREFIX}{kind}:{owner}:{key}", job_id, ex=ttl, nx=True))

    def forget(self, kind: str, owner: str, key: str) -> None:
        self.r.delete(f"{PREFIX}{kind}:{owner}:{key}")

    # -- metrics -----------------------------------------------------------------------
    def count(self, outcome: str, model: str, passes: int = 0, seconds: float = 0.0) -> None:
        pipe = self.r.pipeline()
        pipe.hincrby(f"{PREFIX}metrics:jobs", f"{outcome}|{model}", 1)
        if passes:
            pipe.hincrby(f"{PREFIX}metrics:sweep", "passes", passes)
            pipe.hincrbyfloat(f"{PREFIX}metrics:sweep", "passes_seconds", seconds)
        if outcome == "finished":
            pipe.hincrbyfloat(f"{PREFIX}metrics:sweep", "sum", seconds)
            pipe.hincrby(f"{PREFIX}metrics:sweep", "count", 1)
            for b in SWEEP_BUCKETS:
                if seconds <= b:
                    pipe.hincrby(f"{PREFIX}metrics:sweep", f"le_{b}", 1)
            pipe.hset(f"{PREFIX}metrics:sweep", "last_rate", passes / max(seconds, 1e-9))
        pipe.execute()

    def metrics(self) -> tuple[dict[str, int], dict[str, float]]:
        jobs = {k.decode(): int(v) for k, v in self.r.hgetall(f"{PREFIX}metrics:jobs").items()}
        sweep = {k.decode(): float(v) for k, v in
                 self.r.hgetall(f"{PREFIX}metrics:sweep").items()}
        return jobs, sweep
