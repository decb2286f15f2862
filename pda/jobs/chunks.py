"""One sweep over many workers: a large job split into chunks of whole window blocks.

A job whose planned forward passes exceed ``PDA_CHUNK_PASSES`` is split by the worker
that takes its first message (it computes the prediction and the targets once). Each
chunk is an RQ message any worker may take, on a queue workers serve after single jobs
(``PDA_QUEUE_NAME-chunks``); a job keeps at most ``PDA_CHUNKS_IN_FLIGHT`` chunks
queued and appends its next one when one ends, so chunks of different jobs take turns.
Each chunk stores its partial sums (per-window readouts, compressed) under the job; the
chunk that completes the set enqueues one merge, which turns them into the result.

Every chunk has its own attempt counter: a killed worker's chunk is rerun alone, and a
chunk's partial is stored only by the attempt that holds it (compare-and-set), so no
chunk ever counts twice. Members ``{job}#{chunk}`` and ``{job}#merge`` in the running
and queued indexes let the reaper and the lost-message repair treat them like jobs.

Keys (beside the job record, from :mod:`pda.keys`):
- ``job:{id}:chunks``    hash: chunk -> JSON {status, attempt, worker}
- ``job:{id}:progress``  hash: chunk -> passes done by its current attempt
- ``job:{id}:partials``  hash: chunk -> its partial sums (npz bytes)
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from rq import Queue

from .. import keys
from ..grid import block_ranges, blocks_within
from ..settings import Settings
from .queue import BACKSTOP_SECONDS, TASKS, batch_queue
from .record import JobStatus, encode
from .store import JobStore, now_iso

MERGE = "merge"
PENDING, QUEUED, RUNNING, DONE = "pending", "queued", "running", "done"


def member(job_id: str, part: int | str) -> str:
    """Index member of a chunk (or the merge) in the running and queued zsets."""
    return f"{job_id}#{part}"


def parse_member(value: str) -> tuple[str, str | None]:
    """(job id, chunk or "merge" or None for a whole job)."""
    job_id, _, part = value.partition("#")
    return job_id, part or None


def split(n_windows: int, chunk_passes: int, passes_per_window: int
          ) -> list[tuple[int, int]]:
    """Window ranges [start, stop) of each chunk; one range when the job is not split
    (``chunk_passes`` 0, or the job fits one chunk)."""
    if chunk_passes <= 0 or n_windows * passes_per_window <= chunk_passes:
        return [(0, n_windows)]
    return block_ranges(n_windows, blocks_within(chunk_passes, passes_per_window))


def chunk_queue(settings: Settings, conn: redis.Redis) -> Queue:
    """Chunks of split jobs: workers take them after single jobs and predictions."""
    return Queue(f"{settings.queue_name}-chunks", connection=conn)


def rq_chunk_id(job_id: str, part: int | str, attempt: int) -> str:
    return f"{job_id}-c{part}-a{attempt}"


class Chunks:
    """The chunk bookkeeping of split jobs, on top of the job store."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store, self.r, self.settings = store, store.r, settings
        self.queue = chunk_queue(settings, store.r)

    # -- reading -----------------------------------------------------------------------------
    def states(self, job_id: str) -> dict[int, dict[str, Any]]:
        raw = self.r.hgetall(keys.chunks(job_id))
        return {int(k): json.loads(v) for k, v in raw.items()}

    def state(self, job_id: str, part: int) -> dict[str, Any] | None:
        """One chunk's entry (an HGET: a running chunk reads it at every progress write,
        and the whole table grows with the job's chunks)."""
        raw = self.r.hget(keys.chunks(job_id), str(part))
        return json.loads(raw) if raw is not None else None

    def progress(self, job_id: str) -> int:
        """Forward passes done by the chunks' current attempts (finished ones included)."""
        return sum(int(v) for v in self.r.hvals(keys.chunk_progress(job_id)))

    def partials(self, job_id: str) -> dict[int, bytes]:
        return {int(k): v for k, v in self.r.hgetall(keys.partials(job_id)).items()}

    # -- splitting ---------------------------------------------------------------------------
    def start(self, job_id: str, attempt: int, ranges: list[tuple[int, int]],
              passes_per_window: int, fields: dict[str, Any]) -> bool:
        """Turn running attempt ``attempt`` of the job into chunks: store the plan
        (``fields``: targets, labels, ...) and the chunk table, then enqueue the first
        ``PDA_CHUNKS_IN_FLIGHT``. False if the attempt was taken over or canceled."""
        in_flight = max(1, self.settings.chunks_in_flight)
        table = {str(i): json.dumps({"status": QUEUED if i < in_flight else PENDING,
                                     "attempt": 1, "range": list(r),
                                     "passes": (r[1] - r[0]) * passes_per_window})
                 for i, r in enumerate(ranges)}

        def then(pipe: redis.client.Pipeline) -> None:
            pipe.delete(keys.chunks(job_id), keys.partials(job_id),
                        keys.chunk_progress(job_id))
            pipe.hset(keys.chunks(job_id), mapping=table)
            for k in (keys.chunks(job_id), keys.partials(job_id), keys.chunk_progress(job_id)):
                pipe.expire(k, self.store.result_ttl * 2)
            pipe.zrem(keys.RUNNING, job_id)  # the chunks beat from now on
            now = time.time()
            pipe.zadd(keys.QUEUED, {member(job_id, i): now for i in range(min(in_flight,
                                                                              len(ranges)))})

        ok = self.store.transition(job_id, (JobStatus.RUNNING,), attempt, {
            **fields, "chunks_total": len(ranges), "chunks_done": 0}, then=then)
        if ok:
            for i in range(min(in_flight, len(ranges))):
                self._enqueue(job_id, i, 1, json.loads(table[str(i)]))
        return ok

    def _enqueue(self, job_id: str, part: int, attempt: int, entry: dict[str, Any],
                 *, at_front: bool = False) -> None:
        self.queue_of(job_id).enqueue(
            TASKS["chunk"], job_id, part, attempt, job_id=rq_chunk_id(job_id, part, attempt),
            job_timeout=BACKSTOP_SECONDS, result_ttl=600,
            failure_ttl=self.settings.result_ttl_seconds, at_front=at_front,
            description=f"chunk {part} of {job_id}")

    def queue_of(self, job_id: str) -> Queue:
        """The chunks' queue, or the batch queue for a batch item's chunks and merge (its
        record names its batch): batch work stays behind interactive work."""
        return batch_queue(self.settings, self.r) if self.store.field(job_id, "batch") \
            else self.queue

    # -- a chunk's life ------------------------------------------------------------------------
    def claim(self, job_id: str, part: int, attempt: int, worker: str) -> dict | None:
        """Take chunk ``part`` at ``attempt`` if it is queued at that attempt and the job
        still runs; its table entry, or None (skip the message)."""
        return self._swap(job_id, part, (QUEUED,), attempt, {
            "status": RUNNING, "worker": worker, "started": now_iso()},
            then=lambda pipe: (pipe.zrem(keys.QUEUED, member(job_id, part)),
                               pipe.zadd(keys.RUNNING, {member(job_id, part): time.time()}),
                               pipe.hset(keys.chunk_progress(job_id), str(part), 0)))

    def beat(self, job_id: str, part: int, done: int) -> bool:
        """Chunk ``part`` has done ``done`` passes: its progress, a heartbeat, and the
        job's progress (every chunk's, plus the planning run's pass); False if the job's
        record is gone."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(keys.chunk_progress(job_id), str(part), done)
        pipe.zadd(keys.RUNNING, {member(job_id, part): time.time()}, xx=True)
        pipe.hvals(keys.chunk_progress(job_id))
        total = 1 + sum(int(v) for v in pipe.execute()[2])
        return self.store.set_progress_done(job_id, total)

    def finish(self, job_id: str, part: int, attempt: int, partial: bytes) -> str | None:
        """Store chunk ``part``'s partial sums if ``attempt`` still holds it. Returns
        "merge" when this was the last chunk (the caller enqueues the merge), "next" when
        another chunk was released to the queue, "done" otherwise; None if not stored."""
        outcome: dict[str, Any] = {}

        def write(pipe: redis.client.Pipeline) -> bool:
            rec = self._running_entry(pipe, job_id, part, attempt)
            if rec is None:
                return False
            table = {int(k): json.loads(v) for k, v in pipe.hgetall(keys.chunks(job_id)).items()}
            done = sum(1 for c in table.values() if c["status"] == DONE) + 1
            pending = sorted(i for i, c in table.items() if c["status"] == PENDING)
            pipe.multi()
            pipe.hset(keys.partials(job_id), str(part), partial)
            pipe.hset(keys.chunks(job_id), str(part), json.dumps({**rec, "status": DONE}))
            pipe.hset(keys.job(job_id), mapping=encode({"chunks_done": done}))
            pipe.hincrby(keys.job(job_id), "version", 1)  # event streams show it
            pipe.zrem(keys.RUNNING, member(job_id, part))
            if done == len(table):
                pipe.zadd(keys.RUNNING, {member(job_id, MERGE): time.time()})
                outcome["next"] = MERGE
            elif pending:
                nxt = pending[0]
                pipe.hset(keys.chunks(job_id), str(nxt),
                          json.dumps({**table[nxt], "status": QUEUED}))
                pipe.zadd(keys.QUEUED, {member(job_id, nxt): time.time()})
                outcome["next"], outcome["part"] = "next", (nxt, table[nxt])
            return True

        watched = (keys.chunks(job_id), keys.job(job_id))
        if not self.r.transaction(write, *watched, value_from_callable=True):
            return None
        if outcome.get("next") == "next":
            nxt, entry = outcome["part"]
            self._enqueue(job_id, nxt, entry["attempt"], entry)
            return "next"
        return outcome.get("next", "done")

    def requeue(self, job_id: str, part: int, attempt: int, *, at_front: bool = True) -> bool:
        """Give chunk ``part`` back as attempt ``attempt + 1`` (warm shutdown, a crash, an
        abandoned chunk); False if that attempt does not hold it any more."""
        entry = self._swap(job_id, part, (RUNNING, QUEUED), attempt, {
            "status": QUEUED, "attempt": attempt + 1, "worker": None},
            then=lambda pipe: (pipe.zrem(keys.RUNNING, member(job_id, part)),
                               pipe.zadd(keys.QUEUED, {member(job_id, part): time.time()}),
                               pipe.hset(keys.chunk_progress(job_id), str(part), 0)))
        if entry is None:
            return False
        self._enqueue(job_id, part, attempt + 1, entry, at_front=at_front)
        return True

    def claim_merge(self, job_id: str) -> int | None:
        """Start a merge attempt: count it in the job's ``merge_attempts`` and beat its
        member; the attempt's number, or None if the job is not running."""
        out: dict[str, int] = {}

        def write(pipe: redis.client.Pipeline) -> bool:
            status, count = pipe.hmget(keys.job(job_id), "status", "merge_attempts")
            if status is None or json.loads(status) != JobStatus.RUNNING:
                return False
            out["attempt"] = json.loads(count or "0") + 1
            pipe.multi()
            pipe.hset(keys.job(job_id), mapping=encode({"merge_attempts": out["attempt"]}))
            pipe.zadd(keys.RUNNING, {member(job_id, MERGE): time.time()})
            return True

        ok = self.r.transaction(write, keys.job(job_id), value_from_callable=True)
        return out["attempt"] if ok else None

    def enqueue_merge(self, job_id: str) -> None:
        self.queue_of(job_id).enqueue(
            TASKS["merge"], job_id, job_id=rq_chunk_id(job_id, MERGE, int(time.time() * 1000)),
            at_front=True, result_ttl=600, job_timeout=BACKSTOP_SECONDS,
            description=f"merge of {job_id}")

    def _running_entry(self, pipe, job_id: str, part: int, attempt: int) -> dict | None:
        status = pipe.hget(keys.job(job_id), "status")
        raw = pipe.hget(keys.chunks(job_id), str(part))
        if status is None or json.loads(status) != JobStatus.RUNNING or raw is None:
            return None
        entry = json.loads(raw)
        if entry["status"] != RUNNING or entry["attempt"] != attempt:
            return None
        return entry

    def _swap(self, job_id: str, part: int, allowed: tuple[str, ...], attempt: int,
              changes: dict[str, Any], then=None) -> dict | None:
        """Compare-and-set on one chunk's entry, while the job runs."""
        out: dict[str, Any] = {}

        def write(pipe: redis.client.Pipeline) -> bool:
            status = pipe.hget(keys.job(job_id), "status")
            raw = pipe.hget(keys.chunks(job_id), str(part))
            if status is None or json.loads(status) != JobStatus.RUNNING or raw is None:
                return False
            entry = json.loads(raw)
            if entry["status"] not in allowed or entry["attempt"] != attempt:
                return False
            out["entry"] = {**entry, **changes}
            pipe.multi()
            pipe.hset(keys.chunks(job_id), str(part), json.dumps(out["entry"]))
            if then is not None:
                then(pipe)
            return True

        ok = self.r.transaction(write, keys.chunks(job_id), keys.job(job_id),
                                value_from_callable=True)
        return out["entry"] if ok else None
