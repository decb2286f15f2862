"""API docs that work offline: ``/docs`` (Swagger UI), ``/redoc``, and an exact OpenAPI.

Both pages load their scripts from ``/static/vendor`` (copied from npm, see its README),
never from a CDN. :func:`install` post-processes ``app.openapi()`` so that it declares
every status each route can answer (:data:`STATUSES`; tests/support/statuses.py fails
the test session on any status a test receives that is not declared), with its schema and
the headers the server sets; errors are RFC 9457 problem documents; binary bodies are
``format: binary``; and API keys are declared as required exactly when the server has
them (``PDA_API_KEYS``), so a generated client types calls as authenticated only then.
Every route carries an example request (``x-codeSamples``, shown by ReDoc).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from pda.errors import HTTPStatusError
from pda.problems import to_problem
from pda.settings import Settings

from .callbacks import RESPONSES as CALLBACK_RESPONSES
from .openapi_examples import BATCH, EVENT_STREAM, EXAMPLES, JOB, PROBLEMS, PYTHON_FLOW, TAGS
from .protocol import MAX_HEADER_BYTES
from .schemas import ProblemDoc

VENDOR = "/static/vendor"
METHODS = ("get", "put", "post", "delete", "patch")
#: both pages may load from this server only (inline script and styles are theirs);
#: this also stops ReDoc's sidebar logo, which it fetches from cdn.redoc.ly
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
       "'unsafe-inline'; img-src 'self' data: blob:; worker-src 'self' blob:; "
       "font-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'self'")

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "an API key (PDA_API_KEYS)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "the same API key in a header of its own"},
}
#: either scheme; no empty alternative: with keys set, every /v1 call needs one
SECURITY = [{"bearer": []}, {"apiKey": []}]

BINARY = {"type": "string", "format": "binary"}
#: PNG bodies: image/png, or application/octet-stream to a client that asks for it
#: (Accept), the one binary type client generators map to bytes
PNG = {"image/png": {"schema": BINARY}, "application/octet-stream": {"schema": BINARY}}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _header(description: str, schema: dict[str, Any], required: bool = False
            ) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


RETRY_AFTER = _header("seconds to wait before retrying (or polling again)",
                      {"type": "integer", "minimum": 1})
HEADERS = {
    "Location": _header("the job's URL (poll it)", {"type": "string"}, required=True),
    "Retry-After": RETRY_AFTER,
    "Idempotent-Replayed": _header(
        "true when the answer is the job an earlier request created: the same "
        "Idempotency-Key, or an identical request while its job lives", {"const": "true"}),
    "WWW-Authenticate": _header("Bearer", {"type": "string"}, required=True),
    "Content-Disposition": _header("attachment; filename=\"{job_id}.npy\"",
                                   {"type": "string"}, required=True),
}

#: statuses every /v1 route can answer (beside its own), and every route at all
V1 = {"429": "over the rate limit (PDA_RATE_LIMIT_PER_MINUTE); see Retry-After",
      "503": "the job store (Redis) is unavailable or full; see Retry-After"}
ANY = {"500": "an unexpected error (logged); bad input never gives one",
       "431": f"the request line and header fields are over {MAX_HEADER_BYTES} bytes"}
RESULT = {"404": "unknown job", "409": "not finished (see Retry-After), or failed",
          "410": "canceled, or its results expired"}
#: (method, path) -> the statuses beyond 200/202 the route answers, and why
STATUSES: dict[tuple[str, str], dict[str, str]] = {
    ("post", "/v1/explanations"): {
        "400": "malformed multipart or JSON", "404": "unknown model",
        "409": "this Idempotency-Key was used for a different request",
        "413": "upload too large (PDA_MAX_UPLOAD_BYTES) or too many pixels",
        "415": "not a supported image or content type",
        "422": "invalid parameters (the field is named), a job too large, or a model "
               "that cannot run",
        "429": "over the rate limit, or too many queued jobs for this API key; see "
               "Retry-After",
        "503": "queue full, or the job store unavailable or full; see Retry-After"},
    ("get", JOB): {"404": "unknown job"},
    ("get", f"{JOB}/events"): {"404": "unknown job"},
    ("delete", JOB): {"404": "unknown job"},
    ("get", f"{JOB}/relevance"): RESULT,
    ("get", f"{JOB}/relevance.npy"): RESULT,
    ("get", f"{JOB}/input.png"): RESULT,
    ("get", f"{JOB}/overlay.png"): {**RESULT, "404": "unknown job, or not one of its targets",
                                    "422": "invalid query (target, scale, view, size)"},
    ("get", "/v1/models"): {},
    ("get", "/v1/models/{name}"): {"404": "unknown model"},
    ("post", "/v1/predictions"): {
        "400": "malformed multipart or JSON", "404": "unknown model",
        "413": "upload too large (PDA_MAX_UPLOAD_BYTES) or too many pixels",
        "415": "not a supported image or content type",
        "422": "invalid parameters (the field is named), or a model that cannot run",
        "503": "no worker answered in time, or the job store is unavailable; see "
               "Retry-After"},
    ("post", "/v1/batches"): {
        "400": "malformed multipart or JSON", "404": "unknown model",
        "409": "this Idempotency-Key was used for a different batch",
        "413": "the request is over PDA_BATCH_MAX_BYTES (each image over "
               "PDA_MAX_UPLOAD_BYTES is its item's 413 instead)",
        "415": "not a supported content type (multipart/form-data or JSON)",
        "422": "invalid parameters (the field is named), no images, more than "
               "PDA_BATCH_MAX_ITEMS, or a model that cannot run",
        "429": "over the rate limit, or this API key's open batch items would pass "
               "PDA_BATCH_MAX_OPEN_ITEMS; see Retry-After",
        "503": "the job store unavailable or full; see Retry-After"},
    ("get", BATCH): {"404": "unknown batch"},
    ("delete", BATCH): {"404": "unknown batch"},
    ("get", f"{BATCH}/results.zip"): {"404": "unknown batch"},
    ("get", f"{BATCH}/events"): {"404": "unknown batch"},
    ("get", "/livez"): {},
    ("get", "/readyz"): {"503": "not ready: Redis does not answer (the readiness body)"},
    ("get", "/metrics"): {},
}
#: the response headers each (route, status) sets
RESPONSE_HEADERS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("post", "/v1/explanations"): {"202": ("Location", "Retry-After", "Idempotent-Replayed")},
    ("get", JOB): {"200": ("Retry-After",)},
    ("post", "/v1/batches"): {"202": ("Location", "Retry-After", "Idempotent-Replayed")},
    ("get", BATCH): {"200": ("Retry-After",)},
    ("get", f"{JOB}/relevance"): {"409": ("Retry-After",)},
    ("get", f"{JOB}/relevance.npy"): {"200": ("Content-Disposition",), "409": ("Retry-After",)},
    ("get", f"{JOB}/input.png"): {"409": ("Retry-After",)},
    ("get", f"{JOB}/overlay.png"): {"409": ("Retry-After",)},
}
#: 200 bodies that are not JSON
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("get", f"{JOB}/overlay.png"): PNG,
    ("get", f"{JOB}/input.png"): PNG,
    ("get", f"{JOB}/relevance.npy"): {"application/octet-stream": {"schema": BINARY}},
    ("get", f"{JOB}/events"): {"text/event-stream": {
        "schema": {"type": "string", "description": "server-sent events: `id: <version>`, "
                   "`data: <the job as GET returns it>`, a blank line; `: keep-alive` "
                   "comments between"},
        "example": EVENT_STREAM}},
    ("get", f"{BATCH}/results.zip"): {"application/zip": {"schema": BINARY},
                                      "application/octet-stream": {"schema": BINARY}},
    ("get", f"{BATCH}/events"): {"text/event-stream": {
        "schema": {"type": "string", "description": "server-sent events: `id: <version>`, "
                   "`data: <the batch as GET returns it>`, a blank line"}}},
    ("get", "/metrics"): {"text/plain": {
        "schema": {"type": "string", "description": "Prometheus text format 0.0.4"},
        "example": "# TYPE pda_queue_depth gauge\npda_queue_depth 0.0\n"}},
}


def statuses(method: str, path: str, *, keys: bool) -> dict[str, str]:
    """Every error status ``method path`` can answer, with why."""
    own = STATUSES[(method, path)]
    out = dict(ANY)
    if path.startswith("/v1/"):
        out.update(V1)
        if keys:
            out["401"] = "no API key, or not a valid one"
    out.update(own)
    return dict(sorted(out.items()))


def enrich(schema: dict[str, Any], *, keys: bool = False, callbacks: bool = True
           ) -> dict[str, Any]:
    """Make FastAPI's document exact: statuses, bodies, headers, security, examples; and,
    on a server whose callbacks are off (``callbacks=False``), no ``callback_url`` and no
    callbacks, since a request naming one is refused there."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = ProblemDoc.model_json_schema()
    if keys:
        components["securitySchemes"] = SECURITY_SCHEMES
    schema.setdefault("tags", TAGS)
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method in METHODS:
                _enrich_operation(method, path, op, keys=keys)
                if not callbacks and op.pop("callbacks", None) is not None:
                    _drop_callback_url(op["requestBody"])
    if not callbacks:
        schemas.pop("ExplanationEvent", None)
        schemas.pop("BatchEvent", None)
    if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
        for name in ("HTTPValidationError", "ValidationError"):  # replaced by Problem
            schemas.pop(name, None)
    return schema


def _drop_callback_url(body: dict[str, Any]) -> None:
    """Remove ``callback_url`` from a request body's schemas (and their ``params``)."""
    for media in body.get("content", {}).values():
        props = media.get("schema", {}).get("properties", {})
        props.pop("callback_url", None)
        props.get("params", {}).get("properties", {}).pop("callback_url", None)


def _enrich_operation(method: str, path: str, op: dict[str, Any], *, keys: bool) -> None:
    where = (method, path)
    responses = op.setdefault("responses", {})
    for expressions in op.get("callbacks", {}).values():  # what the receiver may answer
        for item in expressions.values():
            item["post"]["responses"] = CALLBACK_RESPONSES
    if keys and path.startswith("/v1/"):
        op["security"] = SECURITY
    curl, example = EXAMPLES.get(where, (None, None))
    if curl:
        samples = op.setdefault("x-codeSamples", [])
        if not samples:
            samples.append({"lang": "curl", "source": curl})
        if where == ("post", "/v1/explanations"):
            samples.append({"lang": "Python", "label": "Python (httpx)", "source": PYTHON_FLOW})
    ok = next(c for c in ("200", "202") if c in responses)
    if where in BODIES:
        responses[ok]["content"] = BODIES[where]
    content = responses[ok].setdefault("content", {})
    if example is not None and "application/json" in content:
        content["application/json"]["example"] = example
    errors = statuses(method, path, keys=keys)
    for code in [c for c in responses if c[0] in "45" and c not in errors]:
        del responses[code]  # FastAPI's 422 on routes whose parameters cannot fail
    for code, why in errors.items():
        resp = responses.setdefault(code, {})
        resp["description"] = why
        if where == ("get", "/readyz"):
            resp["content"] = {"application/json": {"schema": {
                "$ref": "#/components/schemas/Readiness"}}}
            continue
        doc = PROBLEMS.get(code) or to_problem(
            HTTPStatusError(int(code), why, title=why.split(",")[0]))
        resp["content"] = {"application/problem+json": {"schema": PROBLEM_REF,
                                                        "example": doc}}
    for code in ("429", "503"):
        if code in errors and where != ("get", "/readyz"):
            responses[code]["headers"] = {"Retry-After": RETRY_AFTER}
    if where == ("get", "/readyz"):
        responses["503"]["headers"] = {"Retry-After": RETRY_AFTER}
    if "401" in errors:
        responses["401"]["headers"] = {"WWW-Authenticate": HEADERS["WWW-Authenticate"]}
    for code, names in RESPONSE_HEADERS.get(where, {}).items():
        responses[code].setdefault("headers", {}).update({n: HEADERS[n] for n in names})


def install(app: FastAPI, settings: Settings) -> None:
    """Serve ``/docs`` and ``/redoc`` from local assets, and enrich ``app.openapi()``
    (built once, from this server's settings: whether calls need an API key)."""
    generate = app.openapi
    keys = bool(settings.api_key_list)
    callbacks = settings.webhook_secret is not None and not settings.callback_allowlist.empty

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = enrich(generate(), keys=keys, callbacks=callbacks)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title}: API docs",
            swagger_js_url=f"{root}{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{VENDOR}/swagger-ui/favicon-32x32.png",
            # no validator badge: it would call validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True,
                                   "tryItOutEnabled": False},
        )
        page.headers["Content-Security-Policy"] = CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title}: API reference",
            redoc_js_url=f"{root}{VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon.svg", with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CSP
        return page
