"""Shared dependencies as ``Annotated`` aliases: settings, store, queue, caller."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Request
from rq import Queue

from pda.errors import UnauthorizedError
from pda.jobs.store import JobStore
from pda.jobs.workers import WorkerRegistry
from pda.settings import Settings

from .limits import caller_of, check_rate


@dataclass
class AppState:
    settings: Settings
    conn: redis.Redis
    store: JobStore
    queue: Queue
    embedded: bool
    registry: WorkerRegistry
    predict_queue: Queue


def get_state(request: Request) -> AppState:
    return request.app.state.pda


def get_store(state: Annotated[AppState, Depends(get_state)]) -> JobStore:
    return state.store


def api_keys_of(request: Request) -> list[str]:
    """The API keys the request presents: ``Authorization: Bearer KEY`` and ``X-API-Key``.
    An ``Authorization`` header of another scheme presents a credential we cannot check,
    so it counts as one (an invalid one), never as absent."""
    keys = []
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, key = auth.partition(" ")
        keys.append(key.strip() if scheme.lower() == "bearer" else "")
    if (given := request.headers.get("x-api-key")) is not None:
        keys.append(given)
    return keys


def get_owner(request: Request, state: Annotated[AppState, Depends(get_state)]) -> str:
    """Who is calling: a stable id derived from the API key, or ``public`` without keys.

    With ``PDA_API_KEYS`` set every route here needs a valid key (401 otherwise); jobs
    are then visible only to the key that created them. Every call counts against the
    caller's rate limit (429 past ``PDA_RATE_LIMIT_PER_MINUTE``).
    """
    owner = _authenticate(request, state.settings.api_key_list)
    check_rate(state.conn, caller_of(request, owner), state.settings.rate_limit_per_minute)
    return owner


#: the 401 without a key (also the OpenAPI example's)
API_KEY_REQUIRED = "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


def _authenticate(request: Request, keys: list[str]) -> str:
    """Every key presented must be valid, and all the same one: a valid X-API-Key does not
    excuse a wrong Bearer token beside it (or the other way round)."""
    if not keys:
        return "public"
    given = api_keys_of(request)
    if not given:
        raise UnauthorizedError(API_KEY_REQUIRED)
    for key in given:
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
            raise UnauthorizedError("the API key is not valid (every key sent, as Bearer "
                                    "token or X-API-Key, must be)")
    if len(set(given)) > 1:
        raise UnauthorizedError("two different API keys sent (Bearer token and X-API-Key); "
                                "send one")
    return hashlib.sha256(given[0].encode()).hexdigest()[:16]


StateDep = Annotated[AppState, Depends(get_state)]
StoreDep = Annotated[JobStore, Depends(get_store)]
OwnerDep = Annotated[str, Depends(get_owner)]
