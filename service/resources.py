"""Resources exactly as the API's GETs answer them, for those that send them elsewhere:
the event streams (service/events.py) and the callbacks' events (worker/deliveries.py).

A GET's body is its handler's dict validated and dumped by the route's response model
(FastAPI's ``response_model``); these do the same, so an event's ``data`` is
byte-for-byte what a GET at that moment would have returned. Torch-free and
framework-free: the workers import it to render a callback's body.
"""

from __future__ import annotations

from typing import Any

from pda.jobs.record import JobRecord, JobStatus
from pda.jobs.store import JobStore
from pda.jobs.workers import WorkerRegistry

from .jobs_view import job_public
from .schemas import ExplanationPublic


def explanation(rec: JobRecord, workers_alive: int | None = None, *,
                rates: dict[str, float] | None = None,
                ahead: tuple[int, int] | None = None) -> dict[str, Any]:
    """``GET /v1/explanations/{id}``'s body for the record ``rec`` (``workers_alive``,
    ``rates`` and ``ahead``: what its ETA is computed from, :func:`job_eta`)."""
    body = job_public(rec, workers_alive, rates=rates, ahead=ahead)
    return ExplanationPublic.model_validate(body).model_dump(mode="json")


def explanation_now(store: JobStore, registry: WorkerRegistry, rec: JobRecord
                    ) -> dict[str, Any]:
    """The job as its GET answers it now: for a job still queued or running, with the ETA
    from the workers alive, what they measured for the model and the work queued ahead."""
    if not rec.status.active:
        return explanation(rec)
    ahead = store.work_ahead(rec.id) if rec.status == JobStatus.QUEUED else None
    return explanation(rec, registry.alive_count(), rates=store.model_rates(rec.model),
                       ahead=ahead)
