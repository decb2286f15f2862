"""Turning a stored job record into the public job resource."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from pda.jobs.record import JobRecord, JobStatus

from .problems import Problem


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


#: said in the job resource while it waits and no worker is alive
NO_WORKER_NOTE = ("no worker is alive: the job waits in the queue and starts as soon as a "
                  "worker does (with KEDA scale-from-zero, when one has been started)")


def job_public(rec: JobRecord, workers_alive: int | None = None) -> dict[str, Any]:
    """The public job resource; ``workers_alive`` (when known) adds a note and drops the ETA
    while the job waits with no worker alive to run it."""
    base = f"/v1/explanations/{rec.id}"
    done = rec.progress_done
    total = rec.progress_total or rec.planned_passes
    if rec.status == JobStatus.FINISHED:
        done = total = rec.forward_passes or total
    eta = None
    started = _ts(rec.started_at)
    if rec.status == JobStatus.RUNNING and started and done > 0:
        eta = round((time.time() - started) / done * (total - done), 1)
    note = None
    if rec.status.active and workers_alive == 0:
        eta, note = None, NO_WORKER_NOTE
    links: dict[str, Any] = {"self": base}
    if rec.status == JobStatus.FINISHED:
        targets = [t["target"] for t in rec.targets or []]
        links.update({
            "relevance": f"{base}/relevance",
            "relevance_npy": f"{base}/relevance.npy",
            "input": f"{base}/input.png",
            "overlays": {str(t): f"{base}/overlay.png?target={t}" for t in targets},
        })
    return {
        "id": rec.id, "status": rec.status.value, "model": rec.model, "params": rec.params,
        "progress": {"done": done, "total": total,
                     "fraction": round(done / total, 4) if total else 0.0},
        "eta_seconds": eta, "note": note,
        "created_at": rec.created_at, "started_at": rec.started_at,
        "finished_at": rec.finished_at, "expires_at": rec.expires_at,
        "attempt": rec.attempt, "previous_attempt": rec.previous_attempt,
        "image": rec.image, "prediction": rec.prediction,
        "targets": rec.targets, "error": rec.error, "links": links,
        "chunks": ({"total": rec.chunks_total, "done": rec.chunks_done}
                   if rec.chunks_total else None),
    }


def retry_after(rec: JobRecord) -> str:
    """A polite polling interval: short while running, longer while queued."""
    return "1" if rec.status == JobStatus.RUNNING else "2"


def require_results(rec: JobRecord) -> None:
    """409 while the job is not finished; 410 once its results have expired."""
    status = rec.status
    if status.active:
        raise Problem(409, "Not finished", f"job {rec.id} is {status.value}; poll "
                      f"/v1/explanations/{rec.id} until it is finished",
                      type_="/problems/not-finished", headers={"Retry-After": retry_after(rec)})
    if status == JobStatus.FAILED:
        raise Problem(409, "Job failed", f"job {rec.id} failed and has no results: "
                      f"{(rec.error or {}).get('detail', '')}", type_="/problems/job-failed")
    if status == JobStatus.CANCELED:
        raise Problem(410, "Results deleted", f"job {rec.id} was canceled; its results are "
                      "deleted", type_="/problems/gone")
    expires = _ts(rec.expires_at)
    if expires is not None and expires <= time.time():
        raise expired(rec)


def expired(rec: JobRecord) -> Problem:
    return Problem(410, "Results expired", f"the results of job {rec.id} expired at "
                   f"{rec.expires_at} (PDA_RESULT_TTL_SECONDS); submit it again",
                   type_="/problems/gone")
