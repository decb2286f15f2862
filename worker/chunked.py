"""The job functions of split jobs (pda.jobs.chunks): one chunk of a sweep, and the merge.

A chunk prepares the job the way a single run does (the model from the process cache,
the image from the store, the targets the planning run fixed), sweeps its windows, and
stores its partial sums; the merge turns every chunk's partial sums into the same map a
one-process sweep gives (randomness is per block of windows, and chunks hold whole
blocks), renders the result files and finishes the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from pda.engine.explain import conclude, sweep_part
from pda.engine.sweep import merge_partials, pack_partial
from pda.errors import Canceled, JobFailedError, PDAError
from pda.grid import count_windows
from pda.jobs import lifecycle
from pda.jobs.chunks import MERGE, Chunks, member
from pda.jobs.record import JobRecord, JobStatus
from pda.keys import RUNNING
from pda.problems import job_problem
from pda.settings import Settings, get_settings
from worker import interleave, tasks
from worker.liveness import Pulse, start_beat

log = logging.getLogger("pda.worker")


class ChunkTaken(Exception):
    """The chunk was given to another attempt meanwhile (this worker was taken for dead)."""


def run_chunk(job_id: str, part: int, attempt: int) -> str:
    """Run attempt ``attempt`` of chunk ``part`` of split job ``job_id``."""
    settings = get_settings()
    store = tasks.store_for(settings)
    chunks = Chunks(store, settings)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    entry = chunks.claim(job_id, part, attempt, worker)
    if entry is None:
        return "skipped (the job ended, or the chunk is not at this attempt)"
    record = store.get(job_id)
    if record is None:
        return "gone"
    pulse, stop = _start_beat(chunks, settings, job_id, part,
                              f"job {job_id} chunk {part} attempt {attempt}")
    try:
        partial = _sweep_chunk(store, chunks, settings, record, part, attempt, entry, pulse)
    except Exception as exc:
        return _chunk_stopped(store, chunks, settings, record, part, attempt, exc)
    finally:
        stop.set()
        tasks.current_job = None
    outcome = tasks.persist(chunks.finish, job_id, part, attempt, partial)
    if outcome == MERGE:
        tasks.persist(chunks.enqueue_merge, job_id)
    return f"chunk done ({outcome or 'not stored: taken over or ended'})"


def _sweep_chunk(store, chunks: Chunks, settings: Settings, record: JobRecord, part: int,
                 attempt: int, entry: dict[str, Any], pulse: Pulse) -> bytes:
    job_id = record.id
    last = [0.0]

    def progress(done: int, total: int) -> None:
        pulse.touch()
        now = time.monotonic()
        if now - last[0] > 0.25 or done == total:
            last[0] = now
            if not chunks.beat(job_id, part, done):
                raise tasks.RecordLost(job_id)
            status = store.field(job_id, "status")
            if status != JobStatus.RUNNING:
                raise Canceled(job_id)
            current = chunks.states(job_id).get(part, {})
            if current.get("attempt") != attempt:
                raise ChunkTaken(job_id)
        if tasks.shutdown_requested.is_set():
            raise tasks.Requeue(job_id)
        interleave.between_batches(settings)  # callers of /v1/predictions wait no longer

    job = tasks.prepare_job(store, settings, record, targets=record.targets)
    ids = torch.arange(*entry["range"])
    return pack_partial(sweep_part(job.setup, ids, progress=progress))


def _chunk_stopped(store, chunks: Chunks, settings: Settings, record: JobRecord, part: int,
                   attempt: int, exc: Exception) -> str:
    job_id = record.id
    if isinstance(exc, Canceled | ChunkTaken):
        return "stopped (the job ended, or the chunk was taken over)"
    if isinstance(exc, tasks.RecordLost):
        log.warning("job %s: its record is gone from Redis; chunk %d stopped, nothing "
                    "written", job_id, part)
        return "lost"
    if isinstance(exc, tasks.Requeue):
        tasks.persist(chunks.requeue, job_id, part, attempt)
        log.warning("job %s: chunk %d requeued by a warm shutdown", job_id, part)
        return "requeued"
    if isinstance(exc, PDAError):
        tasks.persist(lifecycle.fail, store, job_id, record.model, job_problem(exc))
        return "failed"
    log.error("job %s: chunk %d attempt %d crashed", job_id, part, attempt, exc_info=exc)
    if attempt <= settings.job_retries:
        tasks.persist(chunks.requeue, job_id, part, attempt, at_front=False)
        return "retrying"
    tasks.persist(lifecycle.fail, store, job_id, record.model, job_problem(JobFailedError(
        f"chunk {part} of the explanation failed after {attempt} attempts: "
        f"{tasks.one_line(exc)}")))
    return "failed"


def run_merge(job_id: str) -> str:
    """Turn the chunks' partial sums into the job's result (once every chunk is done).

    A merge is an attempt like a chunk: it counts itself (the job's ``merge_attempts``),
    beats while it progresses (its scores' passes report progress), and after
    ``PDA_JOB_RETRIES`` reruns a merge that keeps failing ends the job ``failed``."""
    settings = get_settings()
    store = tasks.store_for(settings)
    chunks = Chunks(store, settings)
    record = store.get(job_id)
    if record is None or record.status != JobStatus.RUNNING:
        store.r.zrem(RUNNING, member(job_id, MERGE))
        return "skipped (the job is not running)"
    partials = chunks.partials(job_id)
    if len(partials) != record.chunks_total:
        return f"skipped ({len(partials)} of {record.chunks_total} chunks stored)"
    attempt = tasks.persist(chunks.claim_merge, job_id)
    if attempt is None:
        return "skipped (the job is not running)"
    pulse, stop = _start_beat(chunks, settings, job_id, MERGE,
                              f"job {job_id} merge attempt {attempt}")
    try:
        return _merge(store, settings, record, partials, attempt, pulse)
    except Exception as exc:
        return _merge_stopped(store, chunks, settings, record, attempt, exc)
    finally:
        stop.set()
        tasks.current_job = None


def _merge(store, settings: Settings, record: JobRecord, partials: dict[int, bytes],
           attempt: int, pulse: Pulse) -> str:
    job_id = record.id
    started = time.perf_counter()
    job = tasks.prepare_job(store, settings, record, targets=record.targets)
    p = job.setup.params
    n_w = count_windows(*job.setup.x.shape[-2:], p.window, p.stride)
    sweep = merge_partials([partials[i] for i in sorted(partials)], n_w)
    pulse.touch()
    expl = conclude(job.setup, sweep, seconds=_elapsed(record))
    swept = sweep.forward_passes + 1
    last = [0.0]

    def progress(done: int, _total: int) -> None:
        pulse.touch()
        now = time.monotonic()
        if now - last[0] > 0.25:
            last[0] = now
            if not store.set_progress_done(job_id, swept + done):
                raise tasks.RecordLost(job_id)
            if store.field(job_id, "status") != JobStatus.RUNNING:
                raise Canceled(job_id)

    files, summary = tasks.result_files(record, job, expl, progress=progress)
    if not tasks.persist(store.finish, job_id, files, None, **summary):
        return "not stored (canceled meanwhile)"
    store.r.zrem(RUNNING, member(job_id, MERGE))
    store.count(JobStatus.FINISHED, record.model, passes=expl.forward_passes,
                seconds=summary["seconds"])
    log.info("job %s: merged %d chunks in %.2f s (merge attempt %d)", job_id, len(partials),
             time.perf_counter() - started, attempt)
    return "finished"


def _merge_stopped(store, chunks: Chunks, settings: Settings, record: JobRecord,
                   attempt: int, exc: Exception) -> str:
    job_id = record.id
    if isinstance(exc, Canceled):
        store.r.zrem(RUNNING, member(job_id, MERGE))
        return "stopped (the job ended)"
    if isinstance(exc, tasks.RecordLost):
        store.r.zrem(RUNNING, member(job_id, MERGE))
        return "lost"
    if isinstance(exc, PDAError):
        tasks.persist(lifecycle.fail, store, job_id, record.model, job_problem(exc))
        return "failed"
    log.error("job %s: merge attempt %d crashed", job_id, attempt, exc_info=exc)
    if attempt <= settings.job_retries:
        # fresh heartbeat: the reaper must not enqueue a second merge while this one waits
        chunks.r.zadd(RUNNING, {member(job_id, MERGE): time.time()}, xx=True)
        tasks.persist(chunks.enqueue_merge, job_id)
        return "retrying"
    tasks.persist(lifecycle.fail, store, job_id, record.model, job_problem(JobFailedError(
        f"merging the chunks of the explanation failed after {attempt} attempts: "
        f"{tasks.one_line(exc)}")))
    return "failed"


def _elapsed(record: JobRecord) -> float:
    from datetime import datetime

    if not record.started_at:
        return 0.0
    begun = datetime.fromisoformat(record.started_at.replace("Z", "+00:00")).timestamp()
    return time.time() - begun


def _start_beat(chunks: Chunks, settings: Settings, job_id: str, part: int | str,
                what: str) -> tuple[Pulse, threading.Event]:
    """Beat for a chunk or the merge while it makes progress (:mod:`worker.liveness`), and
    name it as this process's current job; set the returned event to stop beating."""
    pulse = Pulse()
    stop = start_beat(_beat(chunks, job_id, part), pulse, settings.stale_job_seconds / 3,
                      settings.stall_seconds, what)
    tasks.current_job = member(job_id, part)
    return pulse, stop


def _beat(chunks: Chunks, job_id: str, part: int | str) -> Callable[[], None]:
    """The heartbeat of a chunk or the merge: its member's score in the running index
    (progress beats too, but one batch of a big model can take longer than that)."""
    return lambda: chunks.r.zadd(RUNNING, {member(job_id, part): time.time()}, xx=True)
