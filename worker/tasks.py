"""The RQ job functions (paths in :data:`pda.jobs.queue.TASKS`): one attempt of a whole
job, of a chunk of a split job, or of a split job's merge.

Each is a thin adapter: claim the attempt (a compare-and-set, so duplicate or late
messages are skipped), then, inside one :class:`worker.attempt.Attempt`, load the job
(:func:`load`: the model from the process cache, the stored image, the engine's
:class:`pda.engine.explain.Run`) and call the run: the whole explanation (checkpointed),
one chunk's windows, or the maps of the merged chunks; then store the result files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pda.document import faithfulness_summary, result_document, stored_files
from pda.engine.explain import Explanation, Run
from pda.engine.inputs import ModelInput, model_input, to_uint8
from pda.engine.setup import STEPS
from pda.engine.stats import get_stats
from pda.engine.sweep import merge_partials, pack_partial
from pda.errors import PDAError
from pda.grid import count_windows, passes_per_window
from pda.images import original_size
from pda.jobs.attempts import ChunkHold, JobCheckpoints, JobHold, MergeHold
from pda.jobs.chunks import MERGE, Chunks, split
from pda.jobs.queue import connect
from pda.jobs.record import JobRecord, JobStatus
from pda.jobs.store import JobStore
from pda.models.registry import LoadedModel, get_model
from pda.params import ExplainParams
from pda.runtime import Runtime
from pda.settings import Settings, get_settings
from worker.announce import announce_model
from worker.attempt import Attempt, Stop, persist, worker_name

log = logging.getLogger("pda.worker")

_stores: dict[tuple, JobStore] = {}


def store_for(settings: Settings) -> JobStore:
    """One store (one Redis connection pool) per process and configuration, reused by
    every job instead of a new pool per job."""
    key = (settings.redis_url, settings.redis_timeout_seconds, settings.result_ttl_seconds,
           settings.queue_name)
    if key not in _stores:
        _stores[key] = JobStore(connect(settings), settings.result_ttl_seconds,
                                settings.queue_name)
    return _stores[key]


# --- the three job functions -------------------------------------------------------------

def run_explanation(job_id: str, attempt: int) -> str:
    """Run attempt ``attempt`` of job ``job_id`` whole, or split it into chunks."""
    settings = get_settings()
    store = store_for(settings)
    record = store.get(job_id)
    if record is None:
        return "gone"
    # atomic: of two messages for one attempt (a repaired loss, a retried delivery) one runs
    if not store.mark_running(job_id, worker_name(), attempt):
        current = store.fields(job_id, "status", "attempt")
        return f"skipped (the job is {current[0]} at attempt {current[1]}; this is {attempt})"
    record = store.get(job_id) or record
    with Attempt(JobHold(store, settings, record, attempt), settings) as att:
        try:
            # the first write: preparing, and where a rerun resumes (the count stays)
            att.phase("preparing", 0, len(STEPS), **_resuming(record))
            job = load(store, settings, record, att)
            if _split(store, settings, record, attempt, job.run):
                return "split into chunks"
            expl = job.run.explain(checkpoints=JobCheckpoints(store, record, attempt))
            att.phase("writing")
            files, summary = result_files(record, job, expl)
        except Exception as exc:
            return att.stopped(exc)
    if not persist(store.finish, job_id, files, attempt, **summary):
        return "canceled"  # canceled during the last batch, or rerun elsewhere meanwhile
    store.count(JobStatus.FINISHED, record.model, passes=summary["forward_passes"],
                seconds=summary["seconds"])
    return "finished"


def run_chunk(job_id: str, part: int, attempt: int) -> str:
    """Run attempt ``attempt`` of chunk ``part`` of split job ``job_id``."""
    settings = get_settings()
    store = store_for(settings)
    chunks = Chunks(store, settings)
    entry = chunks.claim(job_id, part, attempt, worker_name())
    if entry is None:
        return "skipped (the job ended, or the chunk is not at this attempt)"
    record = store.get(job_id)
    if record is None:
        return "gone"
    with Attempt(ChunkHold(store, settings, record, part, attempt), settings) as att:
        try:
            job = load(store, settings, record, att, targets=record.targets)
            partial = pack_partial(job.run.sweep(tuple(entry["range"])))
        except Exception as exc:
            return att.stopped(exc)
    outcome = persist(chunks.finish, job_id, part, attempt, partial)
    if outcome == MERGE:
        persist(chunks.enqueue_merge, job_id)
    return f"chunk done ({outcome or 'not stored: taken over or ended'})"


def run_merge(job_id: str) -> str:
    """Turn a split job's chunks into its result, once every chunk is done. A merge is an
    attempt like the others: counted (the job's ``merge_attempts``), beating while it
    progresses, given back on a warm shutdown, failing the job after PDA_JOB_RETRIES."""
    settings = get_settings()
    store = store_for(settings)
    chunks = Chunks(store, settings)
    record = store.get(job_id)
    if record is None or record.status != JobStatus.RUNNING:
        store.unrun(f"{job_id}#{MERGE}")
        return "skipped (the job is not running)"
    partials = chunks.partials(job_id)
    if len(partials) != record.chunks_total:
        return f"skipped ({len(partials)} of {record.chunks_total} chunks stored)"
    attempt = persist(chunks.claim_merge, job_id)
    if attempt is None:
        return "skipped (the job is not running)"
    started = time.perf_counter()
    hold = MergeHold(store, settings, record, attempt)
    with Attempt(hold, settings) as att:
        try:
            att.phase("preparing", 0, len(STEPS))
            job = load(store, settings, record, att, targets=record.targets)
            swept = merge_partials([partials[i] for i in sorted(partials)], job.run.windows)
            expl = job.run.explain(swept=swept, seconds=_elapsed(record))
            att.phase("writing")
            files, summary = result_files(record, job, expl)
        except Exception as exc:
            return att.stopped(exc)
    if not persist(store.finish, job_id, files, None, **summary):
        return "not stored (canceled meanwhile)"
    hold.close("finished")
    store.count(JobStatus.FINISHED, record.model, passes=expl.forward_passes,
                seconds=summary["seconds"])
    log.info("job %s: merged %d chunks in %.2f s (merge attempt %d)", job_id, len(partials),
             time.perf_counter() - started, attempt)
    return "finished"


# --- what they share ------------------------------------------------------------------------

@dataclass
class Loaded:
    """A job ready to run: the engine's run, the model, and the photo it came from."""

    run: Run
    model: LoadedModel
    input: ModelInput


def load(store: JobStore, settings: Settings, record: JobRecord, att: Attempt, *,
         targets: list[dict[str, Any]] | None = None) -> Loaded:
    """Load the model (process cache), decode the stored upload and prepare the run,
    reporting each step to ``att``; ``targets`` (the record's, of a split job) fixes the
    targets its planning run chose."""
    runtime = Runtime.from_settings(settings)  # PDA_BACKEND, PDA_PRECISION, PDA_DEVICE, ...
    model = get_model(record.model, runtime.device, settings)
    announce_model(store.r, model)
    params = ExplainParams(**record.params)
    image_bytes = store.image(record.id)
    if image_bytes is None:
        raise PDAError("the uploaded image has expired from the store")
    given = model_input(image_bytes, model.input_size, params.fit,
                        max_pixels=settings.max_image_pixels)

    def on_prediction(prediction: list[dict[str, Any]]) -> None:
        if targets is None:  # the planning run: the job's resource shows it at once
            att.write(prediction=prediction)

    run = Run(model, given.x, params, get_stats(settings.sampler_stats), runtime,
              targets=[t["target"] for t in targets] if targets else None,
              report=att.report, on_prediction=on_prediction)
    return Loaded(run, model, given)


def result_files(record: JobRecord, job: Loaded, expl: Explanation
                 ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The result files to store and the record's summary fields."""
    setup, model, given = job.run.setup, job.model, job.input
    doc = result_document(
        expl, model_name=model.name, input_size=model.input_size,
        image_size=original_size(given.photo), crop_box=given.crop, params=setup.params,
        num_classes=model.num_classes,
    )
    files = stored_files(expl, to_uint8(setup.x.cpu()), given.photo, doc)
    summary = {
        "forward_passes": expl.forward_passes, "seconds": round(expl.seconds, 3),
        "targets": [{**t, **({"faithfulness": faithfulness_summary(e["faithfulness"])}
                             if "faithfulness" in e else {})}
                    for t, e in zip(target_list(expl.targets, expl.labels),
                                    doc["explanations"], strict=True)],
        "unit": expl.unit, "coverage": doc["coverage"],
        "image": {**record.image, "crop_box": list(given.crop)},
    }
    return files, summary


def target_list(targets: list[int], labels: list[str]) -> list[dict[str, Any]]:
    return [{"target": t, "label": lab} for t, lab in zip(targets, labels, strict=True)]


def _split(store: JobStore, settings: Settings, record: JobRecord, attempt: int,
           run: Run) -> bool:
    """Split a large exact job into chunks of whole window blocks (pda.jobs.chunks);
    False when it runs here (small, approximate, or ``PDA_CHUNK_PASSES`` 0)."""
    setup, params = run.setup, run.params
    if params.drilldown is not None or settings.chunk_passes <= 0:
        return False
    H, W = setup.x.shape[-2:]
    n_w = count_windows(H, W, params.window, params.stride)
    per = passes_per_window(params.sampler, params.samples)
    ranges = split(n_w, settings.chunk_passes, per)
    if len(ranges) == 1:
        return False
    fields = {"targets": target_list(setup.targets, setup.labels), "phase": "sweeping",
              "progress_total": run.total}
    if not persist(Chunks(store, settings).start, record.id, attempt, ranges, per, fields):
        raise Stop("taken", f"job {record.id}")
    log.info("job %s split into %d chunks of up to %d passes", record.id, len(ranges),
             settings.chunk_passes)
    return True


def _resuming(record: JobRecord) -> dict[str, Any]:
    """A rerun's first words: where it resumes (the sweep passes its predecessors kept in
    checkpoints, plus the unmodified image's), before it has loaded anything."""
    previous = record.previous_attempt
    if previous is None or not record.checkpoint_passes:
        return {}
    return {"previous_attempt": {**previous, "resumed_from": record.checkpoint_passes + 1}}


def _elapsed(record: JobRecord) -> float:
    """Seconds since the job's first attempt started (a split job's time)."""
    if not record.started_at:
        return 0.0
    begun = datetime.fromisoformat(record.started_at.replace("Z", "+00:00")).timestamp()
    return time.time() - begun

