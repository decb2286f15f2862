"""Limits that keep the service up under hostile or heavy traffic.

- :class:`BodySizeLimit`: an ASGI middleware that answers 413 before reading a body whose
  ``Content-Length`` is over the cap, and stops a chunked or streamed body the moment it
  passes the cap, so no request can make the API buffer more than the cap.
- :func:`check_rate`: requests per caller per minute (``PDA_RATE_LIMIT_PER_MINUTE``), 429.
(The queue caps are the job life cycle's admission: :func:`pda.jobs.lifecycle.admit`.)

All counting is in Redis, so several API replicas share one budget. A caller is its API
key (the owner id); with no ``PDA_API_KEYS`` it is the client's address, which behind a
reverse proxy is the proxy's unless ``PDA_TRUSTED_PROXIES`` names it (:func:`install`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import FastAPI, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from pda import keys
from pda.errors import BatchTooLargeError, RateLimitedError, UploadTooLargeError
from pda.jobs.store import is_full
from pda.settings import Settings

from .problems import problem_response

#: room for multipart boundaries, part headers and the form fields beside the image
ENVELOPE_BYTES = 64 * 1024
WINDOW = 60  # seconds: the rate limit is per minute


def body_limit(settings: Settings, content_type: str) -> int:
    """Most bytes a request body may have: the image cap plus its envelope (base64 in JSON
    is 4/3 of the image)."""
    cap = settings.max_upload_bytes
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        return cap + ENVELOPE_BYTES
    return cap * 4 // 3 + ENVELOPE_BYTES


#: the route whose bodies hold many images: capped by PDA_BATCH_MAX_BYTES instead
BATCHES_PATH = "/v1/batches"


def batch_too_large(settings: Settings) -> BatchTooLargeError:
    return BatchTooLargeError(
        f"the batch exceeds the limit of {settings.batch_max_bytes} bytes "
        "(PDA_BATCH_MAX_BYTES); send fewer or smaller images per batch")


def _limit_of(settings: Settings, scope: Scope, content_type: str
              ) -> tuple[int, Exception]:
    """The body cap of this request, and the error that says it."""
    if scope.get("path") == BATCHES_PATH:
        return settings.batch_max_bytes, batch_too_large(settings)
    return body_limit(settings, content_type), UploadTooLargeError(settings.max_upload_bytes)


class BodySizeLimit:
    """413 for request bodies over :func:`body_limit`, without buffering them."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit, too_large = _limit_of(self.settings, scope, headers.get("content-type", ""))
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            # answered before a byte of the body is read (an Expect: 100-continue client
            # never even sends it); the server closes the connection afterwards
            await self._reject(scope, receive, send, too_large)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except (UploadTooLargeError, BatchTooLargeError):  # raised where no exception
            if started:  # handler turned it into a response
                raise
            await self._reject(scope, receive, send, too_large)

    async def _reject(self, scope: Scope, receive: Receive, send: Send,
                      error: Exception) -> None:
        response = problem_response(error, instance=scope.get("path"),
                                    headers={"Connection": "close"})
        await response(scope, receive, send)


def install(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(BodySizeLimit, settings=settings)
    if settings.trusted_proxy_list:
        # outermost, so every part of the app sees the client the proxies name. The one
        # place forwarded headers are read: `pda serve` turns uvicorn's own reading off
        # (FORWARDED_ALLOW_IPS, which trusts loopback by default, is not consulted)
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_list)


def caller_of(request: Request, owner: str) -> str:
    """Whom the per-caller limits count: the API key's owner id, else the client address:
    the connecting one, or behind proxies listed in ``PDA_TRUSTED_PROXIES`` the first
    address of X-Forwarded-For, from the right, that is not one of them."""
    if owner != "public":
        return owner
    host = request.client.host if request.client else "unknown"
    return f"ip:{host}"


def check_rate(conn: Any, caller: str, limit: int, now: float | None = None) -> None:
    """Count one request of ``caller``; 429 with Retry-After when over ``limit`` a minute.

    A sliding window estimated from two fixed one-minute counters (this minute's, and
    last minute's weighted by how much of it still lies inside the window): two Redis
    commands per request, no scripts, shared by all replicas. Rejected requests are not
    counted, so a client that backs off as told gets through.
    """
    now = time.time() if now is None else now
    minute = int(now // WINDOW)
    elapsed = now - minute * WINDOW
    pipe = conn.pipeline(transaction=False)
    pipe.incr(keys.rate(caller, minute))
    pipe.expire(keys.rate(caller, minute), 2 * WINDOW)
    pipe.get(keys.rate(caller, minute - 1))
    try:
        current, _, previous = pipe.execute()
    except Exception as exc:
        if is_full(exc):  # a full store refuses new jobs (503), not polls and downloads
            return
        raise
    previous = int(previous or 0)
    if previous * (WINDOW - elapsed) / WINDOW + current <= limit:
        return
    conn.decr(keys.rate(caller, minute))
    wait = _rate_wait(limit, current, previous, elapsed)
    who = "client address" if caller.startswith("ip:") else "API key"
    raise RateLimitedError(f"over the limit of {limit} requests a minute for this {who} "
                           f"(PDA_RATE_LIMIT_PER_MINUTE); retry in {wait} s",
                           headers={"Retry-After": str(wait)})


def _rate_wait(limit: int, current: int, previous: int, elapsed: float) -> int:
    """Seconds until one more request fits the window (``current`` includes it)."""
    if current <= limit and previous > 0:
        # this minute's count fits: wait for enough of last minute's weight to slide out
        t = WINDOW - elapsed - WINDOW * (limit - current) / previous
    else:
        # this minute is full: next minute its accepted requests are the weighted ones
        accepted = current - 1
        t = WINDOW - elapsed + (WINDOW * (1 - (limit - 1) / accepted) if accepted else 0)
    return max(1, min(WINDOW, math.ceil(t)))
