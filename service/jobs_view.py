"""Turning a stored job record into the public job resource."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from .problems import Problem


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


#: said in the job resource while it waits and no worker is alive
NO_WORKER_NOTE = ("no worker is alive: the job waits in the queue and starts as soon as a "
                  "worker does (with KEDA scale-from-zero, when one has been started)")


def job_public(rec: dict[str, Any], workers_alive: int | None = None) -> dict[str, Any]:
    """The public job resource; ``workers_alive`` (when known) adds a note and drops the ETA
    while the job waits with no worker alive to run it."""
    job_id = rec["id"]
    base = f"/v1/explanations/{job_id}"
    done = int(rec.get("progress_done") or 0)
    total = int(rec.get("progress_total") or rec.get("planned_passes") or 0)
    status = rec["status"]
    if status == "finished":
        done = total = int(rec.get("forward_passes") or total)
    eta = None
    started = _ts(rec.get("started_at"))
    if status == "running" and started and done > 0:
        elapsed = time.time() - started
        eta = round(elapsed / done * (total - done), 1)
    note = None
    if status in ("queued", "running") and workers_alive == 0:
        eta, note = None, NO_WORKER_NOTE
    links: dict[str, Any] = {"self": base}
    if status == "finished":
        targets = [t["target"] for t in rec.get("targets") or []]
        links.update({
            "relevance": f"{base}/relevance",
            "relevance_npy": f"{base}/relevance.npy",
            "input": f"{base}/input.png",
            "overlays": {str(t): f"{base}/overlay.png?target={t}" for t in targets},
        })
    return {
        "id": job_id,
        "status": status,
        "model": rec["model"],
        "params": rec["params"],
        "progress": {"done": done, "total": total,
                     "fraction": round(done / total, 4) if total else 0.0},
        "eta_seconds": eta,
        "note": note,
        "created_at": rec["created_at"],
        "started_at": rec.get("started_at"),
        "finished_at": rec.get("finished_at"),
        "expires_at": rec.get("expires_at"),
        "attempt": int(rec.get("attempt") or 1),
        "image": rec.get("image") or {},
        "prediction": rec.get("prediction"),
        "targets": rec.get("targets"),
        "error": rec.get("error"),
        "links": links,
    }


def retry_after(rec: dict[str, Any]) -> str:
    """A polite polling interval: short while running, longer while queued."""
    return "1" if rec["status"] == "running" else "2"


def require_results(rec: dict[str, Any]) -> None:
    """409 while the job is not finished; 410 once its results have expired."""
    status = rec["status"]
    if status in ("queued", "running"):
        raise Problem(409, "Not finished", f"job {rec['id']} is {status}; poll "
                      f"/v1/explanations/{rec['id']} until it is finished",
                      type_="/problems/not-finished", headers={"Retry-After": retry_after(rec)})
    if status == "failed":
        raise Problem(409, "Job failed", f"job {rec['id']} failed and has no results: "
                      f"{(rec.get('error') or {}).get('detail', '')}", type_="/problems/job-failed")
    if status == "canceled":
        raise Problem(410, "Results deleted", f"job {rec['id']} was canceled; its results are "
                      "deleted", type_="/problems/gone")
    expires = _ts(rec.get("expires_at"))
    if expires is not None and expires <= time.time():
        raise expired(rec)


def expired(rec: dict[str, Any]) -> Problem:
    return Problem(410, "Results expired", f"the results of job {rec['id']} expired at "
                   f"{rec.get('expires_at')} (PDA_RESULT_TTL_SECONDS); submit it again",
                   type_="/problems/gone")
