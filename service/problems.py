"""The API's exception handlers: every error leaves as the problem document
:func:`pda.problems.to_problem` makes of it (the table is :data:`pda.problems.TABLE`)."""

from __future__ import annotations

import logging
import re
from functools import lru_cache

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pda.errors import (
    HTTPStatusError,
    InternalError,
    ProblemError,
    StoreFullError,
    StoreUnavailableError,
)
from pda.jobs.store import is_full
from pda.problems import (
    PROBLEM_JSON,
    headers_of,
    invalid,
    status_of,
    to_problem,
    unexpected,
    )

log = logging.getLogger("pda.api")


def problem_response(exc: BaseException, *, instance: str | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    """``exc``'s problem document as a response, with its headers (and ``headers``)."""
    return JSONResponse(to_problem(exc, instance=instance), status_code=status_of(exc),
                        media_type=PROBLEM_JSON,
                        headers={**headers_of(exc), **(headers or {})} or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method of the request's path, as the OpenAPI document lists them (Starlette's
    own Allow names only the first route that matched: GET of a job, not its DELETE),
    with HEAD beside GET and OPTIONS; a path outside the document (the viewer, the docs
    pages, static files) serves GET only."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    path = path[len(root):] if root and path.startswith(root) else path
    methods = {"GET"}
    for template, item in request.app.openapi()["paths"].items():
        if _template(template).fullmatch(path):
            methods = {m.upper() for m in item if m in HTTP_METHODS}
            break
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods | {"OPTIONS"})


HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@lru_cache(maxsize=64)
def _template(path: str) -> re.Pattern[str]:
    """A path template's regex: ``{name}`` is one segment, as FastAPI matches it."""
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))




#: redis says it is out of memory / not there
STORE_FULL = StoreFullError("the job store (Redis) has reached its memory limit "
                            "(maxmemory); results expire with time, retry later")
STORE_DOWN = StoreUnavailableError("the job store (Redis) is not reachable; retry shortly")


def install(app: FastAPI) -> None:
    """Every error leaves as a problem document; nothing leaves as a traceback."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return problem_response(exc, instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return problem_response(invalid(exc), instance=request.url.path)

    @app.exception_handler(ValidationError)
    async def _pyd_validation(request: Request, exc: ValidationError):
        return problem_response(invalid(exc), instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs"
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route that matched the
            # path; a path served by several routes (GET and DELETE of a job) has more
            allow = ", ".join(allowed_methods(request))
            if request.method == "OPTIONS":  # RFC 9110 9.3.7: what this resource supports
                return Response(status_code=204, headers={"Allow": allow})
            headers["Allow"] = allow
            detail = f"{request.method} is not a method of {request.url.path}; use {allow}"
        return problem_response(HTTPStatusError(exc.status_code, detail),
                                instance=request.url.path, headers=headers or None)

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis(request: Request, exc: redis.exceptions.RedisError):
        if is_full(exc):
            log.warning("redis full: %s", exc)
            return problem_response(STORE_FULL, instance=request.url.path)
        log.warning("redis unavailable: %s", exc)
        return problem_response(STORE_DOWN, instance=request.url.path)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(InternalError(f"{unexpected(exc)}; it has been logged"),
                                instance=request.url.path)
