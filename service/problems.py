"""RFC 9457 problem details, and the one place that maps exceptions to status codes."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pda.errors import (
    IdempotencyConflictError,
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidImageError,
    ModelLoadError,
    ModelNotInstalledError,
    PDAError,
    QueueFullError,
    Refused,
    TooManyQueuedError,
    UnknownModelError,
)
from pda.jobs.store import is_full

log = logging.getLogger("pda.api")
#: seconds a caller waits before retrying a submit to a full store
STORE_FULL_RETRY_AFTER = 60
#: refusal -> (status, title, problem type, Retry-After seconds or 0). The queue-full wait
#: is about what a worker needs to take a few jobs.
REFUSALS: dict[type[Refused], tuple[int, str, str, int]] = {
    QueueFullError: (503, "Queue full", "/problems/queue-full", 10),
    TooManyQueuedError: (429, "Too many queued jobs", "/problems/too-many-queued-jobs", 5),
    IdempotencyConflictError: (409, "Idempotency-Key reused", "/problems/idempotency", 0),
}
PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An HTTP error with a problem document; raise it from any handler."""

    def __init__(
        self, status: int, title: str, detail: str, *, type_: str = "about:blank",
        headers: dict[str, str] | None = None, **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.type = status, title, detail, type_
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int, title: str, detail: str, *, type_: str = "about:blank",
    instance: str | None = None, headers: dict[str, str] | None = None, **extra: Any,
) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_errors(exc: ValidationError | RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        out.append({"field": ".".join(loc) or "request", "message": msg})
    return out


def validation_problem(errors: list[dict[str, str]], instance: str) -> JSONResponse:
    first = errors[0]
    detail = f"{first['field']}: {first['message']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return problem_response(422, "Invalid parameters", detail, type_="/problems/invalid-parameter",
                            instance=instance, errors=errors)


def pda_error_response(exc: PDAError, instance: str) -> JSONResponse:
    if isinstance(exc, ImageTooSmallError):
        return problem_response(422, "Image too small", str(exc),
                                type_="/problems/image-too-small", instance=instance,
                                errors=[{"field": "image", "message": str(exc)}])
    if isinstance(exc, ModelNotInstalledError):
        return problem_response(422, "Model not installed", str(exc),
                                type_="/problems/model-not-installed", instance=instance,
                                field="model")
    if isinstance(exc, ImageTooLargeError):
        return problem_response(413, "Image too large", str(exc),
                                type_="/problems/image-too-large", instance=instance)
    if isinstance(exc, InvalidImageError):
        return problem_response(415, "Not a supported image", str(exc),
                                type_="/problems/unsupported-image", instance=instance)
    if isinstance(exc, UnknownModelError):
        return problem_response(404, "Unknown model", str(exc), type_="/problems/unknown-model",
                                instance=instance, field="model")
    if isinstance(exc, ModelLoadError):
        return problem_response(422, "Model cannot be loaded", str(exc),
                                type_="/problems/model-load", instance=instance, field="model")
    field = exc.field or "request"
    return validation_problem([{"field": field, "message": str(exc)}], instance)


def install(app: FastAPI) -> None:
    """Every error leaves as a problem document; nothing leaves as a traceback."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(exc.status, exc.title, exc.detail, type_=exc.type,
                                instance=request.url.path, headers=exc.headers, **exc.extra)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused):
        status, title, type_, retry = REFUSALS[type(exc)]
        return problem_response(status, title, str(exc), type_=type_,
                                instance=request.url.path,
                                headers={"Retry-After": str(retry)} if retry else None)

    @app.exception_handler(PDAError)
    async def _pda(request: Request, exc: PDAError):
        return pda_error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_problem(field_errors(exc), request.url.path)

    @app.exception_handler(ValidationError)
    async def _pyd_validation(request: Request, exc: ValidationError):
        return validation_problem(field_errors(exc), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs"
        return problem_response(exc.status_code, titles.get(exc.status_code, "Error"), detail,
                                instance=request.url.path, headers=getattr(exc, "headers", None))

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis(request: Request, exc: redis.exceptions.RedisError):
        if is_full(exc):
            log.warning("redis full: %s", exc)
            return problem_response(
                503, "Store full", "the job store (Redis) has reached its memory limit "
                "(maxmemory); results expire with time, retry later",
                type_="/problems/store-full", instance=request.url.path,
                headers={"Retry-After": str(STORE_FULL_RETRY_AFTER)})
        log.warning("redis unavailable: %s", exc)
        return problem_response(503, "Service unavailable",
                                "the job store (Redis) is not reachable; retry shortly",
                                type_="/problems/store-unavailable", instance=request.url.path,
                                headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal error",
                                f"an unexpected {type(exc).__name__} occurred; it has been logged",
                                instance=request.url.path)
