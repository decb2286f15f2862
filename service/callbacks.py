"""The callbacks as the OpenAPI document declares them (the ``callbacks`` object of the
submit routes): what a ``callback_url`` receives, and what its answer means.

Only documentation: FastAPI turns these routes into the ``callbacks`` of the operations
that pass them (``callbacks=``); nothing here is served. The events are made by
pda.jobs.deliveries and sent by worker/deliveries.py (docs/api.md, "Callbacks").
"""

# no `from __future__ import annotations`: FastAPI reads the handler's body annotation,
# which is a parameter of declared(), at run time
from fastapi import APIRouter, Header
from fastapi.routing import APIRoute
from pydantic import BaseModel

from .schemas import BatchEvent, ExplanationEvent

#: where the event goes: the request's callback_url (an OpenAPI runtime expression)
TARGET = "{$request.body#/callback_url}"
DESCRIPTION = (
    "When the job ends, its event is POSTed to each callback_url its requests named, as "
    "JSON, signed per Standard Webhooks (https://www.standardwebhooks.com): verify "
    "`webhook-signature` with PDA_WEBHOOK_SECRET before trusting the body (docs/api.md). "
    "A 2xx answer ends the delivery; anything else, a timeout or a refused connection is "
    "retried with exponential backoff (10 attempts over about 16 hours at the default "
    "PDA_CALLBACK_RETRY_BASE_SECONDS), with the same `webhook-id`: receivers drop "
    "duplicates by it. The job's `callbacks` show each delivery's state.")
#: what the receiver's answers mean (replaces FastAPI's defaults in service/docs.py)
RESPONSES = {
    "2XX": {"description": "received: the event is not sent again"},
    "default": {"description": "not received (or no answer within "
                "PDA_CALLBACK_TIMEOUT_SECONDS): the same event is sent again later"},
}


def declared(name: str, event: type[BaseModel]) -> list[APIRoute]:
    """The callback routes of a submit operation whose subjects send ``event``s."""
    router = APIRouter()

    @router.post(TARGET, name=name, summary=f"{event.__name__} (sent to callback_url)",
                 description=DESCRIPTION)
    def receive(  # noqa: ANN202 (documentation only: never called)
        body: event,  # type: ignore[valid-type]  (a model: the request body)
        webhook_id: str = Header(description="the event's id: the same on every attempt; "
                                 "drop an event whose id you have processed"),
        webhook_timestamp: str = Header(description="the attempt's time, Unix seconds "
                                        "(reject one far from your clock)"),
        webhook_signature: str = Header(description="v1,<base64 HMAC-SHA256 of "
                                        "'{webhook-id}.{webhook-timestamp}.{body}' keyed "
                                        "with PDA_WEBHOOK_SECRET's bytes>"),
    ):
        pass

    return [r for r in router.routes if isinstance(r, APIRoute)]


#: the callbacks of POST /v1/explanations
EXPLANATION = declared("explanation_event", ExplanationEvent)
#: the callbacks of POST /v1/batches
BATCH = declared("batch_event", BatchEvent)
