"""A job's life, in one place: submit (dedup, idempotency, admission), the transitions a
worker makes, cancel, and the repairs (abandoned jobs, lost queue messages).

::

    submit ──> queued ──start──> running ──finish──> finished
                 ^  ^               │ └──fail────> failed
                 │  └───requeue─────┘ (warm shutdown, crash, abandoned: attempt + 1)
                 └── requeue_lost (its queue message vanished)
    queued/running ──cancel──> canceled

The store's compare-and-set writes make each arrow atomic; the record is the truth and
RQ messages only say "run attempt N of job X".
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue

from .. import keys
from ..errors import (
    IdempotencyConflictError,
    JobAbandonedError,
    QueueFullError,
    TooManyQueuedError,
)
from ..params import ExplainParams
from ..problems import job_problem
from ..settings import Settings
from .chunks import MERGE, Chunks, member, parse_member, rq_chunk_id
from .deliveries import waiting
from .queue import enqueue_attempt, job_timeout, message_pending, queue_for, rq_job_id
from .record import JobRecord, JobStatus
from .store import JobStore, new_job_id, now_iso

log = logging.getLogger("pda.jobs")
#: RQ statuses of a message that will never (again) run its attempt


@dataclass
class Submission:
    """A validated request for an explanation."""

    owner: str  # whose job it is (API key hash, or "public")
    caller: str  # whom the per-caller limits count (the owner, or the client address)
    model: str
    params: ExplainParams
    image: bytes
    plan: dict[str, int]  # windows and forward passes (pda.params.plan)
    image_meta: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    #: where to POST the job's event when it ends; not part of the digest: an identical
    #: request with another callback_url is answered with the same job, which then calls
    #: both (pda.jobs.store.JobStore.add_callback)
    callback_url: str | None = None
    #: a batch item: the batch's id (pda.jobs.batches). Admitted by the batch (its own
    #: limits), stored but not enqueued: the batch feeder enqueues it on the batch queue
    batch: str | None = None

    @property
    def digest(self) -> str:
        """Identical requests (same image, model and parameters) have the same digest."""
        canonical = json.dumps({"model": self.model, "params": self.params.model_dump()},
                               sort_keys=True)
        return hashlib.sha256(self.image + b"\0" + canonical.encode()).hexdigest()


def submit(store: JobStore, queue: Queue, settings: Settings, sub: Submission
           ) -> tuple[JobRecord, bool]:
    """The job for ``sub``: (record, created). An Idempotency-Key already used for this
    request, or an identical request still queued, running or finished, returns that
    job (with ``sub``'s callback added to it); otherwise a new one is admitted, stored
    and enqueued."""
    digest = sub.digest
    prior = _prior(store, settings, sub, digest)
    if prior is not None:
        return _with_callback(store, prior, sub), False
    # only a job that will be created counts: answers from the cache above create nothing
    job_id = new_job_id()
    if sub.batch is None:
        admit(store, queue, settings, sub.caller, job_id)
    passes = sub.plan["forward_passes"]
    rec = JobRecord(
        id=job_id, status=JobStatus.QUEUED, owner=sub.owner, model=sub.model,
        params=sub.params.model_dump(mode="json"), digest=digest, created_at=now_iso(),
        attempt=1, planned_passes=passes, progress_done=0, progress_total=passes,
        image={**sub.image_meta, "bytes": len(sub.image)},
        callbacks=[waiting(sub.callback_url)] if sub.callback_url else None,
        batch=sub.batch,
    )
    live = settings.result_ttl_seconds + job_timeout(settings, passes)
    key = sub.idempotency_key
    try:
        if sub.batch is None:
            store.create(rec, sub.image, live)
        else:  # indexed as queued once fed
            store.create(rec, sub.image, live, index=False)
        if key and not store.remember("idem", sub.owner, key, job_id,
                                      settings.result_ttl_seconds):
            # a concurrent retry with the same key won the race: answer with its job
            other = store.lookup("idem", sub.owner, key)
            store.end(job_id, JobStatus.CANCELED, notify=False)
            prior = store.get(other) if other else None
            return (_with_callback(store, prior, sub) if prior else rec), False
        store.remember("digest", sub.owner, digest, job_id, settings.result_ttl_seconds)
        if sub.batch is None:
            enqueue_attempt(queue, settings, job_id, 1, passes)
    except redis.RedisError:
        # Redis went away half-way: the caller gets a 503 and retries, so leave nothing
        # that would run or answer for this attempt (if Redis is back for it; if not, the
        # workers re-enqueue the orphan and it runs once, unseen)
        with suppress(redis.RedisError):
            store.end(job_id, JobStatus.CANCELED, notify=False,
                      error={"detail": "not accepted: store unavailable"})
            store.forget("digest", sub.owner, digest)
            if key and store.lookup("idem", sub.owner, key) == job_id:
                store.forget("idem", sub.owner, key)
        raise
    return rec, True


def _with_callback(store: JobStore, rec: JobRecord, sub: Submission) -> JobRecord:
    if not sub.callback_url:
        return rec
    return store.add_callback(rec.id, sub.callback_url) or rec


def _prior(store: JobStore, settings: Settings, sub: Submission, digest: str
           ) -> JobRecord | None:
    """The existing job this request names (Idempotency-Key) or repeats (digest)."""
    key = sub.idempotency_key
    if key and (prior_id := store.lookup("idem", sub.owner, key)):
        rec = store.get(prior_id)
        if rec is not None:
            if rec.digest != digest:
                raise IdempotencyConflictError(
                    "this Idempotency-Key was used for a different request")
            return rec
    prior_id = store.lookup("digest", sub.owner, digest)
    if prior_id:
        rec = store.get(prior_id)
        if rec is not None and rec.status in (JobStatus.QUEUED, JobStatus.RUNNING,
                                              JobStatus.FINISHED) and not (
                rec.status == JobStatus.FINISHED and (rec.expires_at or "") <= now_iso()):
            if key:
                store.remember("idem", sub.owner, key, prior_id, settings.result_ttl_seconds)
            return rec
        store.forget("digest", sub.owner, digest)
    return None


def admit(store: JobStore, queue: Queue, settings: Settings, caller: str, job_id: str) -> None:
    """Reserve a place for a new job, or refuse: the queue is full for everyone
    (PDA_MAX_QUEUE_LENGTH), or this caller has PDA_MAX_QUEUED_PER_KEY jobs waiting."""
    depth = queue.count
    if depth >= settings.max_queue_length:
        raise QueueFullError(f"{depth} jobs are waiting, the limit is "
                             f"{settings.max_queue_length} (PDA_MAX_QUEUE_LENGTH); retry later")
    cap = settings.max_queued_per_key
    if store.reserve(caller, job_id, cap) is None:
        raise TooManyQueuedError(f"this API key already has {cap} jobs waiting "
                                 "(PDA_MAX_QUEUED_PER_KEY); wait for one to start, or cancel "
                                 "one")


def cancel(store: JobStore, queue: Queue, rec: JobRecord) -> JobRecord:
    """Cancel (a running sweep notices within one batch) and delete the results."""
    if rec.status != JobStatus.CANCELED:
        store.end(rec.id, JobStatus.CANCELED, canceled_at=now_iso())
        store.forget("digest", rec.owner, rec.digest)
        if rec.status == JobStatus.QUEUED:  # a running job is counted by its worker
            store.count(JobStatus.CANCELED, rec.model)
            with suppress(Exception):  # the job function would skip it anyway
                job = queue.fetch_job(rq_job_id(rec.id, rec.attempt))
                if job is not None:
                    job.cancel()
    return store.get(rec.id) or rec


def requeue(store: JobStore, settings: Settings, job_id: str, attempt: int, passes: int,
            *, at_front: bool = False, reason: str = "crashed") -> bool:
    """Give attempt ``attempt`` back as ``attempt + 1`` and enqueue it (``reason``: why
    it ended, :data:`.record.REASONS`); False if the job is not at that attempt any more
    (ended, or taken over)."""
    if not store.requeued(job_id, attempt + 1, reason):
        return False
    enqueue_attempt(queue_for(settings, store.r, store.field(job_id, "batch")), settings,
                    job_id, attempt + 1, passes, at_front=at_front)
    return True


def fail(store: JobStore, rec_or_id: JobRecord | str, model: str, error: dict[str, Any]
         ) -> None:
    """End a job as failed with ``error`` (a problem document), counting it; a job that
    ended meanwhile (canceled, finished) keeps its status and is not counted."""
    job_id = rec_or_id if isinstance(rec_or_id, str) else rec_or_id.id
    if store.end(job_id, JobStatus.FAILED, error=error,
                 only_from=(JobStatus.QUEUED, JobStatus.RUNNING)):
        store.count(JobStatus.FAILED, model)


def reap_abandoned(settings: Settings, store: JobStore) -> list[str]:
    """Requeue (or fail) running jobs, chunks and merges whose heartbeat stopped: their
    worker died (SIGKILL, OOM) or they made no progress for PDA_STALL_SECONDS (the beat
    stops then, worker.liveness). A dead worker's chunk is rerun alone."""
    out = []
    for stale in store.claim_stale(settings.stale_job_seconds):
        job_id, part = parse_member(stale)
        if part is not None:
            _reap_part(settings, store, job_id, part)
            out.append(stale)
            continue
        rec = store.get(job_id)
        if rec is None or rec.status != JobStatus.RUNNING:
            continue
        # the record's heartbeat_at is written with progress only (the beat thread
        # touches the index): progress that old means the attempt stalled
        reason = "stalled" if time.time() - (rec.heartbeat_at or 0) >= \
            settings.stall_seconds else "worker_lost"
        if rec.attempt <= settings.job_retries:
            if requeue(store, settings, job_id, rec.attempt, rec.planned_passes, at_front=True,
                       reason=reason):
                log.warning("job %s abandoned by %s (%s); requeued as attempt %d",
                            job_id, rec.worker, reason, rec.attempt + 1)
        else:
            fail(store, rec, rec.model or "?", job_problem(JobAbandonedError(
                f"the worker running this job stopped {rec.attempt} times; giving up")))
        out.append(job_id)
    return out


def _reap_part(settings: Settings, store: JobStore, job_id: str, part: str) -> None:
    rec = store.get(job_id)
    if rec is None or rec.status != JobStatus.RUNNING:
        return
    chunks = Chunks(store, settings)
    if part == MERGE:
        if rec.merge_attempts > settings.job_retries:
            fail(store, rec, rec.model, job_problem(JobAbandonedError(
                f"the workers merging this job's chunks stopped {rec.merge_attempts} times; "
                "giving up")))
            return
        store.r.zadd(keys.RUNNING, {member(job_id, MERGE): time.time()})
        chunks.enqueue_merge(job_id)
        log.warning("job %s: its merge was abandoned; enqueued again", job_id)
        return
    entry = chunks.state(job_id, int(part))
    if entry is None:
        return
    if entry["attempt"] <= settings.job_retries:
        if chunks.requeue(job_id, int(part), entry["attempt"]):
            log.warning("job %s: chunk %s abandoned by %s; rerun alone as attempt %d",
                        job_id, part, entry.get("worker"), entry["attempt"] + 1)
    else:
        fail(store, rec, rec.model, job_problem(JobAbandonedError(
            f"the workers running chunk {part} of this job stopped {entry['attempt']} times; "
            "giving up")))


def requeue_lost(settings: Settings, store: JobStore) -> list[str]:
    """Re-enqueue queued jobs whose queue message is gone.

    A message can be lost while the record survives: Redis restarted from an
    append-only file that missed the last second, a crash between storing a job and
    enqueueing it, or a worker that took the message and died (or lost Redis) before
    claiming the job. The record is the truth, so the job is queued again as its next
    attempt (a late duplicate of the old message is then skipped).
    """
    out = []
    for queued in store.queued_since(settings.stale_job_seconds):
        job_id, part = parse_member(queued)
        if part is not None:
            if _requeue_lost_chunk(settings, store, job_id, int(part)):
                out.append(queued)
            continue
        rec = store.get(job_id)
        if rec is None or rec.status != JobStatus.QUEUED:
            store.unindex(job_id)  # ended or expired: not a candidate any more
            continue
        if message_pending(store.r, rq_job_id(job_id, rec.attempt)):
            continue  # waiting in the queue, or being picked up
        if store.claim_repair(job_id, rec.attempt) and requeue(
                store, settings, job_id, rec.attempt, rec.planned_passes, at_front=True,
                reason="message_lost"):
            log.warning("job %s lost its queue message (attempt %d); requeued",
                        job_id, rec.attempt)
            out.append(job_id)
    return out


def _requeue_lost_chunk(settings: Settings, store: JobStore, job_id: str, part: int) -> bool:
    chunks = Chunks(store, settings)
    entry = chunks.state(job_id, part)
    rec = store.get(job_id)
    if entry is None or rec is None or rec.status != JobStatus.RUNNING or \
            entry["status"] != "queued":
        store.r.zrem(keys.QUEUED, member(job_id, part))
        return False
    if message_pending(store.r, rq_chunk_id(job_id, part, entry["attempt"])):
        return False  # waiting in the queue, or being picked up
    if store.claim_repair(member(job_id, part), entry["attempt"]) and chunks.requeue(
            job_id, part, entry["attempt"]):
        log.warning("job %s: chunk %d lost its queue message; requeued", job_id, part)
        return True
    return False
