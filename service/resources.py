"""Resources exactly as the API's GETs answer them, for those that send them elsewhere:
the event streams (service/events.py) and the callbacks' events (worker/deliveries.py).

A GET's body is its handler's dict validated and dumped by the route's response model
(FastAPI's ``response_model``); these do the same, so an event's ``data`` is
byte-for-byte what a GET at that moment would have returned. Torch-free and
framework-free: the workers import it to render a callback's body.
"""

from __future__ import annotations

from typing import Any

from pda.jobs.record import JobRecord

from .jobs_view import job_public
from .schemas import ExplanationPublic


def explanation(rec: JobRecord, workers_alive: int | None = None,
                queued_rate: float | None = None) -> dict[str, Any]:
    """``GET /v1/explanations/{id}``'s body for the record ``rec``."""
    body = job_public(rec, workers_alive, queued_rate)
    return ExplanationPublic.model_validate(body).model_dump(mode="json")
