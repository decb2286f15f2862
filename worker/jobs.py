"""The RQ job: one explanation attempt, a thin adapter around :func:`explain`.

The worker process keeps models and statistics loaded between jobs (module-level
caches in :mod:`worker.pda.models` and :mod:`worker.pda.stats`). Progress goes into the
job record after every batch; cancellation and warm shutdown are checked there too, so
a sweep stops within one batch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from worker.pda.artifacts import build_artifacts
from worker.pda.device import auto_batch_size, resolve_device
from worker.pda.errors import Canceled, PDAError
from worker.pda.explain import ExplainParams, explain, result_document
from worker.pda.images import open_image, preprocess
from worker.pda.models import get_model
from worker.pda.render import to_uint8
from worker.pda.stats import get_stats
from worker.queueing import connect, enqueue_attempt, get_queue
from worker.settings import Settings, get_settings
from worker.store import JobStore

log = logging.getLogger("pda.worker")

#: set by the worker's SIGTERM handler: the running sweep requeues itself and stops
shutdown_requested = threading.Event()
#: a running job that has not heartbeated for this long is taken to be abandoned
STALE_AFTER_SECONDS = 30.0


class Requeue(Exception):
    """Stop this attempt and put the job back on the queue (warm shutdown)."""


def _store(settings: Settings) -> JobStore:
    return JobStore(connect(settings), settings.result_ttl_seconds)


def run_explanation(job_id: str, attempt: int) -> str:
    """Run one attempt of job ``job_id``; the outcome goes to the store, not to RQ."""
    settings = get_settings()
    store = _store(settings)
    record = store.get(job_id)
    if record is None:
        return "gone"
    if record["status"] in ("canceled", "finished", "failed") or record.get("attempt") != attempt:
        return f"skipped ({record['status']}, attempt {record.get('attempt')} != {attempt})"
    worker_name = f"{socket.gethostname()}:{os.getpid()}"
    store.mark_running(job_id, worker_name, attempt)
    model_name = record["model"]
    started = time.perf_counter()
    stop_beat = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, job_id, stop_beat), daemon=True)
    beat.start()
    try:
        files, summary = _explain(store, settings, job_id, record)
    except Canceled:
        log.info("job %s canceled while running", job_id)
        store.count("canceled", model_name)
        return "canceled"
    except Requeue:
        store.requeued(job_id, attempt + 1)
        enqueue_attempt(get_queue(settings, store.r), settings, job_id, attempt + 1,
                        record.get("planned_passes", 0), at_front=True)
        log.warning("job %s requeued by a warm shutdown", job_id)
        return "requeued"
    except PDAError as exc:  # the caller's mistake found late (e.g. a model file that breaks)
        store.end(job_id, "failed", error=_problem(exc, 422))
        store.count("failed", model_name)
        return "failed"
    except Exception as exc:  # transient or internal: retry, then fail with a clear message
        log.exception("job %s attempt %s crashed", job_id, attempt)
        if attempt <= settings.job_retries:
            store.requeued(job_id, attempt + 1)
            enqueue_attempt(get_queue(settings, store.r), settings, job_id, attempt + 1,
                            record.get("planned_passes", 0))
            return "retrying"
        store.end(job_id, "failed", error={
            "type": "/problems/job-failed", "title": "Job failed", "status": 500,
            "detail": f"the explanation failed after {attempt} attempts: "
                      f"{type(exc).__name__}: {exc}"})
        store.count("failed", model_name)
        return "failed"
    finally:
        stop_beat.set()
    seconds = time.perf_counter() - started
    if not store.finish(job_id, files, **summary):  # canceled during the last batch
        return "canceled"
    store.count("finished", model_name, passes=summary["forward_passes"], seconds=seconds)
    return "finished"


def _heartbeat(store: JobStore, job_id: str, stop: threading.Event) -> None:
    # progress also beats, but one batch of a big model can take longer than that
    while not stop.wait(5.0):
        try:
            store.heartbeat(job_id)
        except Exception:  # Redis briefly away: the next beat will do
            pass


def _explain(
    store: JobStore, settings: Settings, job_id: str, record: dict[str, Any]
) -> tuple[dict[str, bytes], dict[str, Any]]:
    device = resolve_device(settings.device)
    model = get_model(record["model"], device, settings)
    params = ExplainParams(**record["params"])
    image_bytes = store.image(job_id)
    if image_bytes is None:
        raise PDAError("the uploaded image has expired from the store")
    image = open_image(image_bytes, max_pixels=settings.max_image_pixels)
    x, crop = preprocess(image, model.input_size)
    stats = get_stats(settings.sampler_stats)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.25 or done == total:
            last[0] = now
            store.set_progress(job_id, done, total)
            if store.field(job_id, "status") == "canceled":
                raise Canceled(job_id)
        if shutdown_requested.is_set():
            raise Requeue(job_id)

    def on_prediction(prediction: list[dict[str, Any]]) -> None:
        store.update(job_id, prediction=prediction)

    batch = settings.batch_size or auto_batch_size(device, model.input_size)
    expl = explain(model, x, params, stats, batch_size=batch, progress=progress,
                   on_prediction=on_prediction)
    doc = result_document(
        expl, model_name=model.name, input_size=model.input_size, image_size=image.size,
        crop_box=crop, params=params, num_classes=model.num_classes,
    )
    files = build_artifacts(expl, to_uint8(x), doc)
    summary = {
        "forward_passes": expl.forward_passes, "seconds": round(expl.seconds, 3),
        "targets": [{"target": t, "label": lab} for t, lab in
                    zip(expl.targets, expl.labels, strict=True)],
        "unit": expl.unit, "coverage": doc["coverage"],
        "image": {**record.get("image", {}), "crop_box": list(crop)},
    }
    return files, summary


def _problem(exc: PDAError, status: int) -> dict[str, Any]:
    return {"type": "/problems/invalid-job", "title": "The job cannot be run",
            "status": status, "detail": str(exc)}


def reap_abandoned(settings: Settings, store: JobStore) -> list[str]:
    """Requeue (or fail) running jobs whose worker stopped heartbeating (SIGKILL, OOM)."""
    out = []
    for job_id in store.claim_stale(STALE_AFTER_SECONDS):
        rec = store.get(job_id)
        if rec is None or rec["status"] != "running":
            continue
        attempt = int(rec.get("attempt") or 1)
        if attempt <= settings.job_retries:
            store.requeued(job_id, attempt + 1)
            enqueue_attempt(get_queue(settings, store.r), settings, job_id, attempt + 1,
                            rec.get("planned_passes", 0), at_front=True)
            log.warning("job %s abandoned by %s; requeued as attempt %d",
                        job_id, rec.get("worker"), attempt + 1)
        else:
            store.end(job_id, "failed", error={
                "type": "/problems/job-abandoned", "title": "Job abandoned", "status": 500,
                "detail": f"the worker running this job stopped {attempt} times; giving up"})
            store.count("failed", rec.get("model", "?"))
        out.append(job_id)
    return out
