"""Checkpoints of a whole job's sweep, so that a rerun attempt resumes instead of restarting.

The sweep of a job that runs whole on one worker is cut into segments of whole window
blocks (randomness is seeded per block, so a segment's partial sums are exactly what the
full sweep computes for those windows: the same mechanism as split jobs' chunks). After
each segment its partial sums (:func:`pda.engine.sweep.pack_partial`) are written
under the job, by a compare-and-set that only the attempt holding the job passes. An
attempt that was rerun (its worker SIGKILLed or OOM-killed, its progress stalled, a warm
shutdown) loads the segments already stored, reports that much progress at once, sweeps
only the rest, and merges all of them (:func:`pda.engine.sweep.merge_partials`) into
the map an uninterrupted sweep gives. The checkpoints are deleted with the job's other
working keys when it finishes, fails or is canceled (:func:`pda.jobs.store.chunk_keys`).

Key: ``job:{id}:checkpoint``, hash ``"{start}-{stop}"`` -> npz bytes. The segment plan
depends only on the job (its window count and passes per window), so every attempt, on
any worker, cuts the sweep the same way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from pda.engine.explain import Setup, sweep_part
from pda.engine.sweep import Sweep, merge_partials, pack_partial
from pda.grid import BLOCK_WINDOWS, count_windows, passes_per_window
from pda.jobs.record import JobStatus
from pda.jobs.store import JobStore, checkpoint_key

log = logging.getLogger("pda.worker")
Progress = Callable[[int, int], None]

#: a checkpoint about every this many sweep passes (whole blocks; at least one block) ...
SEGMENT_PASSES = 5_000
#: ... and at least this many over a job, so a rerun loses at most a tenth of its sweep
MIN_SEGMENTS = 10


def segments(n_windows: int, per_window: int) -> list[tuple[int, int]]:
    """Window ranges [start, stop) of the checkpoint segments, in order."""
    n_blocks = math.ceil(n_windows / BLOCK_WINDOWS)
    by_passes = math.ceil(SEGMENT_PASSES / (per_window * BLOCK_WINDOWS))
    blocks = max(1, min(by_passes, n_blocks // MIN_SEGMENTS))
    size = blocks * BLOCK_WINDOWS
    return [(a, min(a + size, n_windows)) for a in range(0, n_windows, size)]


def load(store: JobStore, job_id: str) -> dict[tuple[int, int], bytes]:
    raw = store.r.hgetall(checkpoint_key(job_id))
    out = {}
    for k, v in raw.items():
        a, b = k.decode().split("-")
        out[(int(a), int(b))] = v
    return out


def save(store: JobStore, job_id: str, attempt: int, seg: tuple[int, int], blob: bytes,
         passes: int) -> bool:
    """Store one segment if ``attempt`` still holds the running job (a superseded attempt
    writes nothing, and an ended job's keys are not re-created)."""
    key = checkpoint_key(job_id)

    def then(pipe) -> None:  # noqa: ANN001 (redis pipeline)
        pipe.hset(key, f"{seg[0]}-{seg[1]}", blob)
        pipe.expire(key, store.result_ttl)

    return store.transition(job_id, (JobStatus.RUNNING,), attempt,
                            {"checkpoint_passes": passes}, then=then)


def resumable_sweep(store: JobStore, job_id: str, attempt: int, setup: Setup,
                    progress: Progress | None,
                    on_resume: Callable[[int], None] | None = None) -> Sweep:
    """The job's full sweep, resumed from its stored checkpoints and checkpointed as it
    goes; ``progress(done, total)`` counts sweep passes, restored ones included, and
    ``on_resume(passes)`` is told once how many were restored (when any were)."""
    p = setup.params
    H, W = setup.x.shape[-2:]
    n_w = count_windows(H, W, p.window, p.stride)
    per = passes_per_window(p.sampler, p.samples)
    plan = segments(n_w, per)
    if len(plan) == 1:
        return sweep_part(setup, progress=progress)
    total = n_w * per
    stored = load(store, job_id)
    parts = {seg: stored[seg] for seg in plan if seg in stored}  # another plan's: ignored
    done = sum((b - a) * per for a, b in parts)
    if parts:
        log.info("job %s attempt %d resumes from %d of %d sweep passes (%d checkpoints)",
                 job_id, attempt, done, total, len(parts))
        if on_resume is not None:
            on_resume(done)
        if progress is not None:
            progress(done, total)
    for seg in plan:
        if seg in parts:
            continue
        offset = done

        def seg_progress(d: int, _t: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + d, total)

        sub = sweep_part(setup, torch.arange(*seg), progress=seg_progress)
        t = time.perf_counter()
        parts[seg] = pack_partial(sub)
        done += (seg[1] - seg[0]) * per
        if not save(store, job_id, attempt, seg, parts[seg], done):
            log.info("job %s attempt %d: checkpoint not stored (the job ended or was taken "
                     "over); the next progress check stops it", job_id, attempt)
        log.debug("job %s: checkpoint %s, %d bytes in %.3f s", job_id, seg, len(parts[seg]),
                  time.perf_counter() - t)
    return merge_partials([parts[seg] for seg in plan], n_w)
