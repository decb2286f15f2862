"""``/v1/explanations/{id}/events``: a job's live event stream (server-sent events).

The streaming machinery is :mod:`service.events`; a route only says which subject to
follow (a :class:`service.events.Source`) and checks, before the stream starts, that it
exists and is the caller's.
"""

from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from pda import keys

from .. import events, resources
from ..deps import AppState, OwnerDep, StateDep
from .explanations import _get_job

router = APIRouter(prefix="/v1", tags=["explanations"])

#: what the OpenAPI document says of a stream's 200
STREAM_DESCRIPTION = (
    "text/event-stream: one event per change of the job (at most 4 a second), `id` its "
    "version, `data` the job as GET /v1/explanations/{id} returns it; `: keep-alive` "
    "comments between; the stream ends after the final status (finished, failed, "
    "canceled)")


def job_snapshot(state: AppState, job_id: str, owner: str | None = None
                 ) -> events.Snapshot | None:
    """The job's event now (as its GET shows it: the ETA and the no-worker note included);
    with ``owner``, a job that is not the caller's is unknown (404)."""
    if owner is not None:
        rec = _get_job(state.store, job_id, owner)
    else:
        rec = state.store.get(job_id)
        if rec is None:
            return None
    return events.Snapshot(rec.version,
                           resources.explanation_now(state.store, state.registry, rec),
                           final=not rec.status.active)


def job_source(state: AppState, job_id: str) -> events.Source:
    return events.Source(f"explanation:{job_id}", ((keys.job(job_id), "version"),),
                         lambda: job_snapshot(state, job_id))


@router.get("/explanations/{job_id}/events", response_class=events.EventStreamResponse,
            responses={200: {"description": STREAM_DESCRIPTION},
                       204: {"description": "resumed (Last-Event-ID) after the job's final "
                             "event: nothing newer to send"}})
async def get_explanation_events(
    job_id: str, request: Request, state: StateDep, owner: OwnerDep,
    last_event_id: str | None = Header(
        None, max_length=32, description="the id of the last event received: only newer "
        "ones are sent (a browser's EventSource sends it when it reconnects)"),
) -> Response:
    """Follow the job live (server-sent events) instead of polling it: `curl -N`."""
    seed = await run_in_threadpool(job_snapshot, state, job_id, owner)
    return events.respond(request, job_source(state, job_id), seed,
                          events.last_event_id(last_event_id))
