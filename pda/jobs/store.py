"""Jobs and their results in Redis: reads and writes of the one record API and workers share.

RQ only carries "run job X, attempt N" messages; the truth about a job (status,
progress, prediction, error, files) lives here, so a crashed worker, a retried message
or a canceled job can never make the status lie. Which writes happen when is decided in
:mod:`.lifecycle`; compare-and-set writes go through redis-py's ``transaction()`` helper.

Keys (prefix ``pda:``, names from :mod:`pda.keys`):
- ``job:{id}``        hash: the job record (:class:`.record.JobRecord`, JSON values)
- ``job:{id}:image``  the uploaded image bytes, until the job ends
- ``job:{id}:files``  hash: result files (:data:`pda.document.STORED`)
- ``running``         zset: running job id -> last heartbeat (for the reaper)
- ``queued``          zset: queued job id -> when it was queued (to find lost messages)
- ``open:{caller}``   zset: a caller's not-yet-ended job ids (the per-key queued cap);
                      only an index: whether a job counts is read from its record
- ``digest:{owner}:{sha}`` / ``idem:{owner}:{key}``: request dedup -> job id
- ``metrics:*``       cluster-wide job counters read by the API's /metrics

Every write of a record raises its ``version`` (event streams resume from it), and the
transitions that end a job write its callbacks' events in the same transaction
(:mod:`.deliveries`, the outbox).
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import redis

from .. import keys
from ..errors import CallbackNotAllowedError
from . import deliveries
from .record import TERMINAL, JobRecord, JobStatus, encode

#: a finished job's record outlives its files by this long, so late readers get a
#: clear "expired" (410) instead of "unknown" (404)
TOMBSTONE_SECONDS = 7 * 24 * 3600
SWEEP_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


def is_full(exc: BaseException) -> bool:
    """Redis refused a write because it reached ``maxmemory`` (policy noeviction)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("OOM"))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: Redis away for a moment, or full until results expire."""
    return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError) \
        or is_full(exc)


def checkpoint_key(job_id: str) -> str:
    """Hash: a whole job's sweep checkpoints, window range -> partial sums (npz bytes)."""
    return f"{keys.job(job_id)}:checkpoint"


def chunk_keys(job_id: str) -> tuple[str, ...]:
    """A job's working keys, dropped when it ends: a split job's (pda.jobs.chunks) and a
    whole job's checkpoints (pda.jobs.attempts.JobCheckpoints)."""
    return (keys.chunks(job_id), keys.chunk_progress(job_id), keys.partials(job_id),
            checkpoint_key(job_id))


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


#: the event a job's callbacks are sent when it ends as each status
EVENTS = {JobStatus.FINISHED: "explanation.finished", JobStatus.FAILED: "explanation.failed",
          JobStatus.CANCELED: "explanation.canceled"}


def new_job_id() -> str:
    """128 random bits, URL-safe: job ids cannot be guessed or enumerated."""
    return secrets.token_urlsafe(16)


class JobStore:
    def __init__(self, conn: redis.Redis, result_ttl: int = 24 * 3600,
                 queue_name: str = "pda") -> None:
        self.r = conn
        self.result_ttl = result_ttl
        #: the RQ queue of callback deliveries (PDA_QUEUE_NAME-callbacks)
        self.callback_queue = f"{queue_name}-callbacks"

    # -- records -----------------------------------------------------------------------
    def create(self, record: JobRecord | dict[str, Any], image: bytes, live_seconds: int,
               *, index: bool = True) -> None:
        """Store a new job and its image; both live ``live_seconds`` until it finishes.
        ``index=False``: not in the queued index yet (a batch item, until it is fed to
        the queue: pda.jobs.batches)."""
        record = JobRecord.model_validate(record) if isinstance(record, dict) else record
        record.version = record.version or 1  # the first; every later write raises it
        key = keys.job(record.id)
        pipe = self.r.pipeline()
        pipe.hset(key, mapping=record.encode())
        pipe.expire(key, live_seconds + TOMBSTONE_SECONDS)
        pipe.set(keys.image(record.id), image, ex=live_seconds)
        if index:
            pipe.zadd(keys.QUEUED, {record.id: time.time()})
        pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.r.hgetall(keys.job(job_id))
        return JobRecord.decode(raw) if raw else None

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set fields of an existing record; False (nothing written) if it is gone."""
        return self._hset_existing(keys.job(job_id), fields)

    def fields(self, job_id: str, *names: str) -> list[Any]:
        return [None if v is None else json.loads(v)
                for v in self.r.hmget(keys.job(job_id), names)]

    def field(self, job_id: str, name: str) -> Any:
        return self.fields(job_id, name)[0]

    def image(self, job_id: str) -> bytes | None:
        return self.r.get(keys.image(job_id))

    def _hset_existing(self, key: str, fields: dict[str, Any],
                       zadd: tuple[str, str] | None = None) -> bool:
        """HSET only if ``key`` still exists: a worker's write must never re-create a
        partial record, without a TTL, for a job whose record Redis lost (a restart
        without persistence, a flush). Optionally refreshes ``zadd`` = (zset, member)."""
        mapping = encode(fields)

        def write(pipe: redis.client.Pipeline) -> bool:
            if not pipe.exists(key):
                return False
            pipe.multi()
            pipe.hset(key, mapping=mapping)
            pipe.hincrby(key, "version", 1)
            if zadd is not None:
                pipe.zadd(zadd[0], {zadd[1]: time.time()}, xx=True)
            return True

        return self.r.transaction(write, key, value_from_callable=True)

    # -- compare-and-set transitions (called by lifecycle) ----------------------------------
    def transition(self, job_id: str, allowed: tuple[JobStatus, ...], attempt: int | None,
                   fields: dict[str, Any], then=None) -> bool:
        """Set ``fields`` if the job is in ``allowed`` at ``attempt`` (None: any); True if
        done. ``then(pipe)`` queues more writes in the same transaction; when ``fields``
        end the job, so do its callbacks' events.

        Optimistic locking on the record makes every hand-over atomic: of two workers
        holding messages for the same attempt only one starts it, a requeue never
        revives a job that was canceled or taken over meanwhile, and a DELETE landing
        just before a result is stored wins."""
        key = keys.job(job_id)
        mapping = encode(fields)

        def write(pipe: redis.client.Pipeline) -> bool:
            status, att = pipe.hmget(key, "status", "attempt")
            if status is None or json.loads(status) not in allowed or (
                    attempt is not None and json.loads(att or "1") != attempt):
                return False
            events = self._events(pipe, job_id, fields.get("status"), mapping)
            pipe.multi()
            pipe.hset(key, mapping=mapping)
            pipe.hincrby(key, "version", 1)
            events(pipe)
            if then is not None:
                then(pipe)
            return True

        return self.r.transaction(write, key, value_from_callable=True)

    def mark_running(self, job_id: str, worker: str, attempt: int) -> bool:
        """Claim a queued job for ``attempt``; False if it is not (any more) that attempt."""
        def index(pipe: redis.client.Pipeline) -> None:
            pipe.zadd(keys.RUNNING, {job_id: time.time()})
            pipe.zrem(keys.QUEUED, job_id)

        return self.transition(job_id, (JobStatus.QUEUED,), attempt, {
            "status": JobStatus.RUNNING, "started_at": now_iso(), "worker": worker,
            "heartbeat_at": time.time(), "phase": "preparing", "phase_done": 0,
            "phase_total": 0}, then=index)

    def requeued(self, job_id: str, attempt: int, reason: str = "worker_lost") -> bool:
        """Back to ``queued`` as ``attempt``, if it still is ``attempt - 1`` and not ended;
        ``reason`` (:data:`.record.REASONS`) says why the previous attempt ended."""
        def index(pipe: redis.client.Pipeline) -> None:
            pipe.zrem(keys.RUNNING, job_id)
            pipe.zadd(keys.QUEUED, {job_id: time.time()})

        return self.transition(job_id, (JobStatus.RUNNING, JobStatus.QUEUED), attempt - 1, {
            "status": JobStatus.QUEUED, "attempt": attempt, "phase": "queued",
            "started_at": None, "worker": None,
            "previous_attempt": {"attempt": attempt - 1, "ended": reason, "at": now_iso()}},
            then=index)

    def finish(self, job_id: str, files: dict[str, bytes], attempt: int | None = None,
               **fields: Any) -> bool:
        """Store the results and mark the job finished, unless it was canceled meanwhile
        or a newer attempt took it over (this worker was taken for dead)."""
        expires = time.time() + self.result_ttl
        return self.transition(job_id, (JobStatus.RUNNING,), attempt, {
            "status": JobStatus.FINISHED, "finished_at": now_iso(),
            "expires_at": now_iso(expires), "files": sorted(files), **fields},
            then=lambda pipe: self.store_results(pipe, job_id, files))

    def set_progress(self, job_id: str, done: int, total: int,
                     rate: float | None = None, **fields: Any) -> bool:
        """Progress (``done`` never lowers what the record shows: a rerun that resumes
        behind its predecessor's last report keeps the job's count where it was), the
        attempt's measured passes/s (pda.eta), ``fields`` (the phase) and a heartbeat;
        False if the record is gone (nothing written)."""
        return self.report(job_id, {"progress_done": done, "progress_total": total,
                                    **({"progress_rate": rate} if rate else {}), **fields},
                           member=job_id) is not None

    def set_progress_done(self, job_id: str, done: int) -> bool:
        """Passes done so far (a split job's chunks add theirs up; never lowered); False if
        the record is gone."""
        return self.report(job_id, {"progress_done": done}) is not None

    def report(self, job_id: str, fields: dict[str, Any], *, member: str | None = None
               ) -> tuple[str, int] | None:
        """Write an attempt's progress ``fields`` into the record, with ``heartbeat_at``,
        while the job is queued or running (an ended job's record is left as it is), and
        refresh ``member``'s score in the running index. ``progress_done`` never decreases
        for a client. Returns the job's (status, attempt) as they were, so one round trip
        also tells the attempt whether it was canceled or taken over; None if the record
        is gone (nothing is written: a lost record is never re-created)."""
        key = keys.job(job_id)

        def write(pipe: redis.client.Pipeline) -> tuple[str, int] | None:
            status, attempt, shown = pipe.hmget(key, "status", "attempt", "progress_done")
            if status is None:
                return None
            status, attempt = json.loads(status), json.loads(attempt or "1")
            if status not in (JobStatus.QUEUED, JobStatus.RUNNING):
                return status, attempt
            values = {**fields, "heartbeat_at": time.time()}
            if "progress_done" in values and shown is not None:
                values["progress_done"] = max(int(values["progress_done"]), json.loads(shown))
            pipe.multi()
            pipe.hset(key, mapping=encode(values))
            pipe.hincrby(key, "version", 1)
            if member is not None:
                pipe.zadd(keys.RUNNING, {member: time.time()}, xx=True)
            return status, attempt

        return self.r.transaction(write, key, value_from_callable=True)

    def beat(self, member: str) -> None:
        """An attempt's heartbeat: its member's score in the running index (a whole job's
        id, or a chunk's or merge's ``{id}#{part}``); never adds a member."""
        self.r.zadd(keys.RUNNING, {member: time.time()}, xx=True)

    def unrun(self, member: str) -> None:
        """Take ``member`` off the running index (a merge that ended or stepped aside)."""
        self.r.zrem(keys.RUNNING, member)

    def end(self, job_id: str, status: JobStatus, *,
            only_from: tuple[JobStatus, ...] | None = None, notify: bool = True,
            **fields: Any) -> bool:
        """Failed or canceled: drop image and files, keep the record as a tombstone, and
        send its callbacks their event (not with ``notify=False``: a job the caller never
        saw accepted).

        A record Redis has lost is not re-created (False): a tombstone without its
        creation fields would answer for a job nobody can see. With ``only_from``, a job
        in any other status is left as it is (False): a chunk that fails because a DELETE
        just removed its image must not turn the canceled job into a failed one."""
        key = keys.job(job_id)
        mapping = encode({"status": status, "finished_at": now_iso(),
                          "expires_at": now_iso(time.time() + self.result_ttl), **fields})

        def write(pipe: redis.client.Pipeline) -> bool:
            exists = pipe.exists(key)
            current = pipe.hget(key, "status") if exists else None
            if exists and only_from is not None:
                if current is None or json.loads(current) not in only_from:
                    return False
            # a job that had ended already (a DELETE of a finished job) sends no event
            events = self._events(pipe, job_id, status, mapping) if exists and notify and \
                current is not None and json.loads(current) not in TERMINAL else _nothing
            pipe.multi()
            if exists:
                pipe.hset(key, mapping=mapping)
                pipe.hincrby(key, "version", 1)
                events(pipe)
                pipe.expire(key, self.result_ttl + TOMBSTONE_SECONDS)
            pipe.delete(keys.files(job_id), keys.image(job_id), *chunk_keys(job_id))
            pipe.zrem(keys.RUNNING, job_id)
            pipe.zrem(keys.QUEUED, job_id)
            return bool(exists)

        return self.r.transaction(write, key, value_from_callable=True)

    # -- callbacks (the outbox, pda.jobs.deliveries) --------------------------------------
    def _events(self, pipe: redis.client.Pipeline, job_id: str, status: Any,
                mapping: dict[str, str]):  # noqa: ANN202 (returns a writer of the pipe)
        """Read (in a transaction's watch phase, before ``mapping`` is written) what the
        events of a job that ends as ``status`` need: the record with ``mapping`` applied
        (its callbacks, when ``mapping`` sets them, else the record's) is their data;
        returns the writes to queue after MULTI (nothing if the status does not end the
        job or no callback waits)."""
        key = keys.job(job_id)
        if status not in EVENTS:
            return _nothing
        raw = mapping.get("callbacks") or pipe.hget(key, "callbacks")
        entries = json.loads(raw) if raw else None
        if not entries or not any(e.get("status") == deliveries.WAITING for e in entries):
            return _nothing
        now = time.time()
        shown = deliveries.new_events(entries, EVENTS[JobStatus(status)], now)
        snapshot = {k.decode(): json.loads(v) for k, v in pipe.hgetall(key).items()}
        snapshot.update({k: json.loads(v) for k, v in mapping.items()})
        snapshot.update(callbacks=shown, version=int(snapshot.get("version") or 0) + 2)

        def write(p: redis.client.Pipeline) -> None:
            p.hset(key, "callbacks", json.dumps(shown))
            p.hincrby(key, "version", 1)
            deliveries.queue_events(p, self.r, self.callback_queue, entries, shown,
                                    subject="explanation", subject_id=job_id,
                                    data=snapshot, mirror=key, now=now)
        return write

    def add_callback(self, job_id: str, url: str) -> JobRecord | None:
        """Add ``url`` to the callbacks of an existing job (an identical request, or a
        retry with its Idempotency-Key, that names its own callback): it waits for the
        end of a queued or running job, and is sent the event at once if the job has
        ended. The same URL twice is one callback. None if the record is gone."""
        key = keys.job(job_id)

        def write(pipe: redis.client.Pipeline) -> JobRecord | None:
            raw = pipe.hgetall(key)
            if not raw:
                return None
            rec = JobRecord.decode(raw)
            entries = list(rec.callbacks or [])
            if any(e.get("url") == url for e in entries):
                return rec
            if len(entries) >= deliveries.MAX_CALLBACKS:
                raise CallbackNotAllowedError(
                    f"job {job_id} has {len(entries)} callback URLs already, the most one "
                    "job may have")
            mapping = encode({"callbacks": [*entries, deliveries.waiting(url)]})
            events = self._events(pipe, job_id, rec.status, mapping) if \
                rec.status in TERMINAL else _nothing
            pipe.multi()
            pipe.hset(key, mapping=mapping)
            pipe.hincrby(key, "version", 1)
            events(pipe)
            return rec

        rec = self.r.transaction(write, key, value_from_callable=True)
        return self.get(job_id) if rec is not None else None

    def store_results(self, pipe: redis.client.Pipeline, job_id: str,
                      files: dict[str, bytes]) -> None:
        """Queue the writes that keep a finished job's files for the result TTL."""
        pipe.hset(keys.files(job_id), mapping=files)
        pipe.expire(keys.files(job_id), self.result_ttl)
        pipe.delete(keys.image(job_id), *chunk_keys(job_id))  # the results keep a photo copy
        pipe.expire(keys.job(job_id), self.result_ttl + TOMBSTONE_SECONDS)
        pipe.zrem(keys.RUNNING, job_id)

    # -- indexes of running and queued jobs -------------------------------------------------
    def claim_stale(self, older_than: float) -> list[str]:
        """Running jobs whose heartbeat stopped: each is returned to exactly one caller."""
        ids = self.r.zrangebyscore(keys.RUNNING, 0, time.time() - older_than)
        return [i.decode() for i in ids if self.r.zrem(keys.RUNNING, i) == 1]

    def queued_since(self, older_than: float) -> list[str]:
        """Jobs queued at least ``older_than`` seconds ago (checked for a lost message)."""
        ids = self.r.zrangebyscore(keys.QUEUED, 0, time.time() - older_than)
        return [i.decode() for i in ids]

    def unindex(self, job_id: str) -> None:
        """Forget a job in the running and queued indexes (it ended, or its record is gone)."""
        pipe = self.r.pipeline()
        pipe.zrem(keys.RUNNING, job_id)
        pipe.zrem(keys.QUEUED, job_id)
        pipe.execute()

    def claim_repair(self, job_id: str, attempt: int, ttl: int = 3600) -> bool:
        """True for exactly one caller per (job, attempt): who may re-enqueue it."""
        return bool(self.r.set(keys.repair(job_id, attempt), 1, ex=ttl, nx=True))

    def running_count(self) -> int:
        return int(self.r.zcard(keys.RUNNING))

    # -- per-caller queued cap -------------------------------------------------------------
    def reserve(self, caller: str, job_id: str, cap: int, grace: float = 60.0) -> int | None:
        """Count ``job_id`` against ``caller``'s queued jobs unless ``cap`` are queued.

        Returns how many were queued before, or None (nothing reserved) when at the cap.
        The index only lists candidates; each counts while its record says ``queued`` (so
        cancel, finish, fail and requeue can never make the count drift), or for ``grace``
        seconds after being reserved while its record is being written. Watching the
        index makes concurrent reservations by the same caller (any API replica) exact.
        """
        key = keys.open_jobs(caller)
        now = time.time()

        def write(pipe: redis.client.Pipeline) -> int | None:
            queued, ended = self._classify(pipe.zrange(key, 0, -1, withscores=True), now, grace)
            if len(queued) >= cap:
                return None
            pipe.multi()
            if ended:
                pipe.zrem(key, *ended)
            pipe.zadd(key, {job_id: now})
            pipe.expire(key, TOMBSTONE_SECONDS)
            return len(queued)

        return self.r.transaction(write, key, value_from_callable=True)

    def _classify(self, members: list[tuple[bytes, float]], now: float,
                  grace: float) -> tuple[list[str], list[str]]:
        """(queued, ended) among index members; running ones are neither (they may requeue)."""
        if not members:
            return [], []
        pipe = self.r.pipeline(transaction=False)
        for m, _ in members:
            pipe.hget(keys.job(m.decode()), "status")
        queued, ended = [], []
        for (m, since), status in zip(members, pipe.execute(), strict=True):
            job_id = m.decode()
            if status is None:  # being created (counts), or never written (forgotten)
                (queued if now - since < grace else ended).append(job_id)
            elif json.loads(status) == JobStatus.QUEUED:
                queued.append(job_id)
            elif json.loads(status) in TERMINAL:
                ended.append(job_id)
        return queued, ended

    # -- files -------------------------------------------------------------------------
    def file(self, job_id: str, name: str) -> bytes | None:
        return self.r.hget(keys.files(job_id), name)

    # -- dedup -------------------------------------------------------------------------
    def lookup(self, kind: str, owner: str, key: str) -> str | None:
        v = self.r.get(keys.dedup(kind, owner, key))
        return v.decode() if v else None

    def remember(self, kind: str, owner: str, key: str, job_id: str, ttl: int) -> bool:
        """Point ``kind:owner:key`` at ``job_id`` unless already set; True if set now."""
        return bool(self.r.set(keys.dedup(kind, owner, key), job_id, ex=ttl, nx=True))

    def forget(self, kind: str, owner: str, key: str) -> None:
        self.r.delete(keys.dedup(kind, owner, key))

    # -- metrics -----------------------------------------------------------------------
    def count(self, outcome: str, model: str, passes: int = 0, seconds: float = 0.0) -> None:
        pipe = self.r.pipeline()
        pipe.hincrby(keys.METRICS_JOBS, f"{outcome}|{model}", 1)
        if passes:
            pipe.hincrby(keys.METRICS_SWEEP, "passes", passes)
            pipe.hincrbyfloat(keys.METRICS_SWEEP, "passes_seconds", seconds)
        if outcome == JobStatus.FINISHED:
            pipe.hincrbyfloat(keys.METRICS_SWEEP, "sum", seconds)
            pipe.hincrby(keys.METRICS_SWEEP, "count", 1)
            for b in SWEEP_BUCKETS:
                if seconds <= b:
                    pipe.hincrby(keys.METRICS_SWEEP, f"le_{b}", 1)
            pipe.hset(keys.METRICS_SWEEP, "last_rate", passes / max(seconds, 1e-9))
        pipe.execute()

    def record_rates(self, model: str, *, rate: float | None = None,
                     prep: float | None = None) -> None:
        """What an attempt of ``model`` measured: its passes/s once sweeping, and how long
        its set-up took (an exponential mean over attempts, so one loaded moment does not
        set every estimate)."""
        old = self.model_rates(model)
        new = {}
        for name, value in (("rate", rate), ("prep", prep)):
            if value is not None and value > 0:
                prior = old.get(name)
                new[f"{model}|{name}"] = value if prior is None else 0.7 * prior + 0.3 * value
        if new:
            self.r.hset(keys.METRICS_RATES, mapping=new)

    def model_rates(self, model: str) -> dict[str, float]:
        """``{"rate": passes/s, "prep": seconds}`` the workers last measured for ``model``
        (either missing until an attempt measured it)."""
        rate, prep = self.r.hmget(keys.METRICS_RATES, f"{model}|rate", f"{model}|prep")
        return {k: float(v) for k, v in (("rate", rate), ("prep", prep)) if v is not None}

    def work_ahead(self, job_id: str, limit: int = 200) -> tuple[int, int]:
        """(forward passes still to run, jobs) of the jobs queued before ``job_id`` and of
        the running ones: what a queued job waits for. Past ``limit`` queued jobs the rest
        are counted at the mean of those read (a long queue costs one bounded read)."""
        score = self.r.zscore(keys.QUEUED, job_id)
        ahead = self.r.zrangebyscore(keys.QUEUED, "-inf", f"({score}") if score else []
        running = {m.decode().partition("#")[0] for m in self.r.zrange(keys.RUNNING, 0, -1)}
        running.discard(job_id)
        ids = [i.decode() for i in ahead[:limit]] + sorted(running)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(keys.job(i), "progress_total", "progress_done")
        passes, counted = 0, 0
        for total, done in pipe.execute():
            if total is not None:
                passes += max(0, json.loads(total) - json.loads(done or "0"))
                counted += 1
        extra = max(0, len(ahead) - limit)
        if extra and counted:
            passes += extra * passes // counted
        return passes, len(ahead) + len(running)

    def metrics(self) -> tuple[dict[str, int], dict[str, float]]:
        jobs = {k.decode(): int(v) for k, v in self.r.hgetall(keys.METRICS_JOBS).items()}
        sweep = {k.decode(): float(v) for k, v in self.r.hgetall(keys.METRICS_SWEEP).items()}
        return jobs, sweep


def _nothing(pipe: redis.client.Pipeline) -> None:
    """No writes to queue."""
