"""Turning a stored job record into the public job resource."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from pda.errors import (
    NoResultsError,
    NotFinishedError,
    ResultsDeletedError,
    ResultsExpiredError,
    UnknownJobError,
)
from pda.eta import eta_seconds
from pda.jobs.record import JobRecord, JobStatus


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


#: said in the job resource while it waits and no worker is alive
NO_WORKER_NOTE = ("no worker is alive: the job waits in the queue and starts as soon as a "
                  "worker does (with KEDA scale-from-zero, when one has been started)")


def job_eta(rec: JobRecord, done: int, total: int, *, rates: dict[str, float] | None = None,
            ahead: tuple[int, int] | None = None, workers: int | None = None,
            now: float | None = None) -> float | None:
    """Seconds until the job is done, every phase still to run included (the total counts
    the sweep and the scores), from the first poll on.

    Running: the remaining passes at this attempt's measured rate (:mod:`pda.eta`); before
    it has one (its set-up), at the rate the workers last measured for the model, plus what
    is left of the set-up they last measured. Queued: the work ahead of it (jobs queued
    before it and the running ones, ``ahead``: passes, jobs) shared by the workers alive,
    then its own set-up and passes. None only before any worker has measured the model."""
    now = time.time() if now is None else now
    rates = rates or {}
    rate = rec.progress_rate or rates.get("rate")
    prep = rates.get("prep", 0.0)
    left = max(0, total - done)
    if rec.status == JobStatus.RUNNING and rec.progress_rate and rec.phase != "preparing":
        since = now - rec.heartbeat_at if rec.heartbeat_at else 0.0
        return eta_seconds(left, rec.progress_rate, since)
    if rate is None or rate <= 0:
        return None
    if rec.status == JobStatus.RUNNING:
        started = _ts(rec.started_at) or now
        return round(max(0.0, prep - (now - started)) + left / rate, 1)
    if rec.status != JobStatus.QUEUED:
        return None
    wait = ahead[0] / (rate * max(1, workers or 1)) if ahead else 0.0
    return round(wait + prep + left / rate, 1)


def job_public(rec: JobRecord, workers_alive: int | None = None, *,
               rates: dict[str, float] | None = None,
               ahead: tuple[int, int] | None = None) -> dict[str, Any]:
    """The public job resource; ``workers_alive`` (when known) adds a note and drops the ETA
    while the job waits with no worker alive to run it; ``rates`` (what the workers
    measured for the model) and ``ahead`` (the work queued before it) give its ETA
    (:func:`job_eta`)."""
    base = f"/v1/explanations/{rec.id}"
    done = rec.progress_done
    total = rec.progress_total or rec.planned_passes
    if rec.status == JobStatus.FINISHED:
        # the total fixed at submit; a drill-down's is an upper bound of what it ran
        done = total = total or rec.forward_passes or 0
    eta = job_eta(rec, done, total, rates=rates, ahead=ahead, workers=workers_alive)
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
        **phase_of(rec),
        "eta_seconds": eta, "note": note,
        "created_at": rec.created_at, "started_at": rec.started_at,
        "finished_at": rec.finished_at, "expires_at": rec.expires_at,
        "attempt": rec.attempt, "previous_attempt": rec.previous_attempt,
        "image": rec.image, "prediction": rec.prediction,
        "targets": rec.targets, "error": rec.error, "links": links,
        "chunks": ({"total": rec.chunks_total, "done": rec.chunks_done}
                   if rec.chunks_total else None),
        "callbacks": rec.callbacks,
    }


def phase_of(rec: JobRecord) -> dict[str, Any]:
    """The job's phase and that phase's own count while it is queued or running."""
    if not rec.status.active:
        return {"phase": None, "phase_progress": None}
    phase = "queued" if rec.status == JobStatus.QUEUED else rec.phase
    if phase == "queued" and rec.status == JobStatus.RUNNING:
        phase = "preparing"  # claimed, before its first report
    unit = "steps" if phase in ("queued", "preparing", "writing") else "passes"
    count = None if phase == "queued" else {"done": rec.phase_done, "total": rec.phase_total,
                                            "unit": unit}
    return {"phase": phase, "phase_progress": count}


def retry_after(rec: JobRecord) -> str:
    """A polite polling interval: short while running, longer while queued."""
    return "1" if rec.status == JobStatus.RUNNING else "2"


def require_results(rec: JobRecord) -> None:
    """409 while the job is not finished; 410 once its results have expired."""
    status = rec.status
    if status.active:
        raise not_finished(rec.id, status.value, retry_after(rec))
    if status == JobStatus.FAILED:
        raise NoResultsError(f"job {rec.id} failed and has no results: "
                             f"{(rec.error or {}).get('detail', '')}")
    if status == JobStatus.CANCELED:
        raise results_deleted(rec.id)
    expires = _ts(rec.expires_at)
    if expires is not None and expires <= time.time():
        raise expired(rec)


def unknown_job(job_id: str) -> UnknownJobError:
    return UnknownJobError(f"no explanation job {job_id!r} (unknown, deleted long ago, or "
                           "not yours)")


def not_finished(job_id: str, status: str, retry: str = "1") -> NotFinishedError:
    return NotFinishedError(f"job {job_id} is {status}; poll /v1/explanations/{job_id} "
                            "until it is finished", headers={"Retry-After": retry})


def results_deleted(job_id: str) -> ResultsDeletedError:
    return ResultsDeletedError(f"job {job_id} was canceled; its results are deleted")


def expired(rec: JobRecord) -> ResultsExpiredError:
    return ResultsExpiredError(f"the results of job {rec.id} expired at {rec.expires_at} "
                               "(PDA_RESULT_TTL_SECONDS); submit it again")
