"""The RQ job: one explanation attempt, a thin adapter around :func:`explain`.

The worker process keeps models and statistics loaded between jobs (module-level
caches in :mod:`pda.models.registry` and :mod:`pda.engine.stats`). Progress goes into the
job record after every batch; cancellation and warm shutdown are checked there too, so
a sweep stops within one batch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from pda.document import faithfulness_summary, result_document, stored_files
from pda.engine.device import resolve_device
from pda.engine.explain import (
    Explanation,
    Setup,
    add_faithfulness,
    conclude,
    faithfulness_passes,
    prepare,
    split_progress,
    sweep_part,
)
from pda.engine.inputs import preprocess, to_uint8
from pda.engine.stats import get_stats
from pda.errors import Canceled, JobFailedError, PDAError
from pda.eta import RateMeter
from pda.grid import count_windows, passes_per_window
from pda.images import open_image, original_size
from pda.jobs import lifecycle
from pda.jobs.chunks import Chunks, split
from pda.jobs.queue import connect
from pda.jobs.record import JobRecord, JobStatus
from pda.jobs.store import JobStore, is_transient
from pda.models.registry import get_model
from pda.params import ExplainParams
from pda.problems import job_problem
from pda.runtime import Runtime
from pda.settings import Settings, get_settings
from worker import checkpoints, interleave
from worker.announce import announce_model
from worker.liveness import Pulse, start_beat

log = logging.getLogger("pda.worker")

#: set by the worker's SIGTERM handler: the running sweep requeues itself and stops
shutdown_requested = threading.Event()
#: the job this process is computing now (None when idle), for the worker's heartbeat
current_job: str | None = None
#: Redis errors a worker rides out (a restart, a failover) rather than failing the job
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class Requeue(Exception):
    """Stop this attempt and put the job back on the queue (warm shutdown)."""


class Superseded(Exception):
    """This attempt was taken for abandoned and the job rerun: stop without writing."""


class RecordLost(Exception):
    """The job's record vanished from Redis mid-job: stop without re-creating it."""


_stores: dict[tuple, JobStore] = {}


def store_for(settings: Settings) -> JobStore:
    """One store (one Redis connection pool) per process and configuration, reused by
    every job instead of a new pool per job."""
    key = (settings.redis_url, settings.redis_timeout_seconds, settings.result_ttl_seconds)
    if key not in _stores:
        _stores[key] = JobStore(connect(settings), settings.result_ttl_seconds)
    return _stores[key]


def run_explanation(job_id: str, attempt: int) -> str:
    """Run one attempt of job ``job_id``; the outcome goes to the store, not to RQ."""
    settings = get_settings()
    store = store_for(settings)
    record = store.get(job_id)
    if record is None:
        return "gone"
    worker_name = f"{socket.gethostname()}:{os.getpid()}"
    # atomic: of two messages for one attempt (a repaired loss, a retried delivery) one runs
    if not store.mark_running(job_id, worker_name, attempt):
        current = store.fields(job_id, "status", "attempt")
        return f"skipped (the job is {current[0]} at attempt {current[1]}; this is {attempt})"
    started = time.perf_counter()
    pulse = Pulse()
    stop_beat = start_beat(lambda: store.heartbeat(job_id), pulse,
                           settings.stale_job_seconds / 3, settings.stall_seconds,
                           f"job {job_id} attempt {attempt}")
    global current_job
    current_job = job_id
    try:
        outcome = _explain(store, settings, job_id, record, attempt, pulse)
    except Exception as exc:
        return _stopped(store, settings, record, attempt, exc)
    finally:
        stop_beat.set()
        current_job = None
    if outcome is None:
        return "split into chunks"
    files, summary = outcome
    seconds = time.perf_counter() - started
    # canceled during the last batch, or rerun elsewhere meanwhile
    if not persist(store.finish, job_id, files, attempt, **summary):
        return "canceled"
    store.count(JobStatus.FINISHED, record.model, passes=summary["forward_passes"],
                seconds=seconds)
    return "finished"


def _stopped(store: JobStore, settings: Settings, record: JobRecord, attempt: int,
             exc: Exception) -> str:
    """What an attempt that did not finish leaves behind, by why it stopped."""
    job_id, model = record.id, record.model
    if isinstance(exc, Canceled):
        log.info("job %s canceled while running", job_id)
        store.count(JobStatus.CANCELED, model)
        return "canceled"
    if isinstance(exc, Superseded):
        log.warning("job %s attempt %d was rerun elsewhere; dropping this one", job_id, attempt)
        return "superseded"
    if isinstance(exc, RecordLost):
        log.warning("job %s: its record is gone from Redis (data lost: a restart without "
                    "persistence, or a flush); stopped the sweep and wrote nothing, so no "
                    "partial record is left behind", job_id)
        persist(store.unindex, job_id)
        return "lost"
    if isinstance(exc, Requeue):
        persist(lifecycle.requeue, store, settings, job_id, attempt, record.planned_passes,
                at_front=True, reason="shutdown")
        log.warning("job %s requeued by a warm shutdown", job_id)
        return "requeued"
    if isinstance(exc, PDAError):  # the caller's mistake found late (a broken model file)
        log.warning("job %s failed: %s", job_id, exc)
        persist(lifecycle.fail, store, job_id, model, job_problem(exc))
        return "failed"
    # transient or internal: retry, then fail with a clear message
    log.error("job %s attempt %s crashed", job_id, attempt, exc_info=exc)
    if attempt <= settings.job_retries:
        persist(lifecycle.requeue, store, settings, job_id, attempt, record.planned_passes)
        return "retrying"
    persist(lifecycle.fail, store, job_id, model, job_problem(JobFailedError(
        f"the explanation failed after {attempt} attempts: {one_line(exc)}")))
    return "failed"


def persist(fn: Callable[..., Any], *args: Any, patience: float = 30.0, **kwargs: Any) -> Any:
    """``fn(...)``, retried while Redis is briefly away (a restart) or full (results
    expiring make room), so that a computed result or a requeue is not thrown away; past
    ``patience`` the error propagates and the reaper reruns the job once its heartbeat is
    stale."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return fn(*args, **kwargs)
        except (*REDIS_DOWN, redis.exceptions.ResponseError) as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line; TorchScript puts the model's own error last."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = (lines[-1] if lines else "").removeprefix("builtins.")
    if not text.startswith(type(exc).__name__) and ": " not in text[:40]:
        text = f"{type(exc).__name__}: {text}"
    return text[:300]


@dataclass
class Prepared:
    """A job ready to sweep: the engine's setup and the image it came from."""

    setup: Setup
    image: Any  # the decoded upload (PIL), for the photo overlay
    crop: tuple[int, int, int, int]
    model: Any  # the LoadedModel


def prepare_job(store: JobStore, settings: Settings, record: JobRecord, *,
                targets: list[dict[str, Any]] | None = None,
                on_prediction: Callable[[list[dict[str, Any]]], None] | None = None
                ) -> Prepared:
    """Load the model (process cache), decode the stored upload and prepare the sweep;
    ``targets`` (the record's, of a split job) fixes the targets its planning run chose."""
    runtime = Runtime.from_settings(settings)  # PDA_BACKEND, PDA_PRECISION, PDA_DEVICE, ...
    device = resolve_device(runtime.device)
    model = get_model(record.model, device, settings)
    announce_model(store.r, model)
    params = ExplainParams(**record.params)
    image_bytes = store.image(record.id)
    if image_bytes is None:
        raise PDAError("the uploaded image has expired from the store")
    image = open_image(image_bytes, max_pixels=settings.max_image_pixels,
                       fit_to=model.input_size)
    x, crop = preprocess(image, model.input_size, params.fit)
    setup = prepare(model, x, params, get_stats(settings.sampler_stats), runtime,
                    targets=[t["target"] for t in targets] if targets else None,
                    on_prediction=on_prediction)
    return Prepared(setup, image, crop, model)


def result_files(record: JobRecord, job: Prepared, expl: Explanation, *,
                 progress: Any = None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The result files to store and the record's summary fields; the maps are scored for
    faithfulness here first (a whole job's and a split job's alike)."""
    setup, model = job.setup, job.model
    expl = add_faithfulness(model, setup, expl, progress=progress)
    doc = result_document(
        expl, model_name=model.name, input_size=model.input_size,
        image_size=original_size(job.image), crop_box=job.crop, params=setup.params,
        num_classes=model.num_classes,
    )
    files = stored_files(expl, to_uint8(setup.x.cpu()), job.image, doc)
    summary = {
        "forward_passes": expl.forward_passes, "seconds": round(expl.seconds, 3),
        "targets": [{**t, **({"faithfulness": faithfulness_summary(e["faithfulness"])}
                             if "faithfulness" in e else {})}
                    for t, e in zip(target_list(expl.targets, expl.labels),
                                    doc["explanations"], strict=True)],
        "unit": expl.unit, "coverage": doc["coverage"],
        "image": {**record.image, "crop_box": list(job.crop)},
    }
    return files, summary


def target_list(targets: list[int], labels: list[str]) -> list[dict[str, Any]]:
    return [{"target": t, "label": lab} for t, lab in zip(targets, labels, strict=True)]


def _explain(
    store: JobStore, settings: Settings, job_id: str, record: JobRecord, attempt: int,
    pulse: Pulse,
) -> tuple[dict[str, bytes], dict[str, Any]] | None:
    """Run the job here, or split it into chunks (then None: the chunks finish it)."""
    last = [0.0]
    meter = RateMeter()  # this attempt's passes/s, for the job resource's ETA

    def progress(done: int, total: int) -> None:
        """After every forward batch of the sweep and of the scores: the one place where
        an attempt reports progress and checks for cancel, takeover and shutdown."""
        pulse.touch()  # the attempt's heartbeat beats while this is called (liveness)
        now = time.monotonic()
        rate = meter.add(done, now)
        if now - last[0] > 0.25 or done == total:
            last[0] = now
            try:
                # +1 on both: the unmodified image's pass, counted in the job's plan
                if not store.set_progress(job_id, done + 1, total + 1, rate=rate):
                    raise RecordLost(job_id)
                status, current = store.fields(job_id, "status", "attempt")
            except REDIS_DOWN:  # keep computing; the result is written once Redis is back
                status, current = None, attempt
            if status == "canceled":
                raise Canceled(job_id)
            if current != attempt:
                raise Superseded(job_id)
        if shutdown_requested.is_set():
            raise Requeue(job_id)
        interleave.between_batches(settings)  # callers of /v1/predictions wait no longer

    def on_prediction(prediction: list[dict[str, Any]]) -> None:
        if not store.update(job_id, prediction=prediction):
            raise RecordLost(job_id)

    job = prepare_job(store, settings, record, on_prediction=on_prediction)
    if _split(store, settings, record, attempt, job.setup):
        return None
    sweep_progress, score_progress = split_progress(progress, faithfulness_passes(job.setup))
    if job.setup.params.drilldown is None:
        sweep = checkpoints.resumable_sweep(
            store, job_id, attempt, job.setup, sweep_progress,
            on_resume=lambda passes: _resumed(store, record, passes))
    else:
        sweep = sweep_part(job.setup, progress=sweep_progress)
    expl = conclude(job.setup, sweep)
    return result_files(record, job, expl, progress=score_progress)


def _resumed(store: JobStore, record: JobRecord, passes: int) -> None:
    """Say in the job's resource where this attempt resumed (its first progress)."""
    if record.previous_attempt is not None:
        store.update(record.id, previous_attempt={**record.previous_attempt,
                                                  "resumed_from": passes + 1})


def _split(store: JobStore, settings: Settings, record: JobRecord, attempt: int,
           setup: Setup) -> bool:
    """Split a large exact job into chunks of whole window blocks (pda.jobs.chunks);
    False when it runs here (small, approximate, or ``PDA_CHUNK_PASSES`` 0)."""
    params = setup.params
    if params.drilldown is not None or settings.chunk_passes <= 0:
        return False
    H, W = setup.x.shape[-2:]
    n_w = count_windows(H, W, params.window, params.stride)
    per = passes_per_window(params.sampler, params.samples)
    ranges = split(n_w, settings.chunk_passes, per)
    if len(ranges) == 1:
        return False
    fields = {"targets": target_list(setup.targets, setup.labels),
              "progress_done": 1,
              "progress_total": n_w * per + 1 + faithfulness_passes(setup)}
    if not persist(Chunks(store, settings).start, record.id, attempt, ranges, per, fields):
        raise Superseded(record.id)
    log.info("job %s split into %d chunks of up to %d passes", record.id, len(ranges),
             settings.chunk_passes)
    return True

