"""``/v1/predictions``: synchronous top-k for one image, computed by a worker."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from pda import catalog
from pda.errors import (
    ModelNotInstalledError,
    NoWorkerError,
    NoWorkerInTimeError,
    RemoteProblem,
)
from pda.jobs import predictions
from pda.jobs.store import new_job_id
from pda.params import PredictParams
from pda.problems import invalid

from .. import forms
from ..deps import OwnerDep, StateDep
from ..schemas import PredictionPublic
from ..uploads import decode_upload, read_upload

router = APIRouter(prefix="/v1", tags=["models"])
#: Retry-After when no worker is alive (a scaler has to start one) or none answered
NO_WORKER_RETRY_AFTER = 30
BUSY_RETRY_AFTER = 5


@router.post("/predictions", response_model=PredictionPublic,
             openapi_extra={"requestBody": forms.prediction_body(),
                            "x-codeSamples": [{"lang": "curl", "source":
                            "curl -F image=@examples/chelsea.png "
                            "http://127.0.0.1:8000/v1/predictions"}]})
async def create_prediction(request: Request, state: StateDep, owner: OwnerDep):
    """Synchronous top-k classes for one image (multipart 'image' or JSON image_base64),
    computed by a worker while the request waits (PDA_PREDICT_TIMEOUT_SECONDS)."""
    data, raw, _ = await read_upload(request, state.settings)
    return await run_in_threadpool(_predict, state, data, raw)


def _request(state, raw: dict[str, Any]) -> dict[str, Any]:
    settings = state.settings
    try:
        params = PredictParams(**raw)
    except ValidationError as exc:
        raise invalid(exc) from exc
    info = catalog.model_info(params.model or settings.default_model, settings,
                              state.conn, local_is_truth=state.embedded)
    if info.get("available") is False and info["source"] == "builtin":
        raise ModelNotInstalledError.of(info["name"], info["install"])
    return {"model": info["name"], "top": params.top, "fit": params.fit,
            "input_size": info.get("input_size")}


def _predict(state, data: bytes, raw: dict[str, Any]) -> dict[str, Any]:
    settings = state.settings
    req = _request(state, raw)
    decode_upload(data, settings, req["input_size"])
    pred_id = new_job_id()
    timeout = settings.predict_timeout_seconds
    start = time.perf_counter()
    predictions.submit(state.conn, state.predict_queue, pred_id, req, data, timeout)
    if state.registry.alive_count() == 0:
        # the queued request stays until it expires, so a scaler sees the demand
        raise NoWorkerError("no worker is alive to compute the prediction; one may be "
                            "starting (scale from zero): retry shortly",
                            headers={"Retry-After": str(NO_WORKER_RETRY_AFTER)})
    try:
        body = predictions.wait(state.conn, pred_id, timeout)
    except predictions.NoAnswer:
        predictions.withdraw(state.conn, state.predict_queue, pred_id)
        raise NoWorkerInTimeError(f"no worker answered within {timeout:g} s "
                                  "(PDA_PREDICT_TIMEOUT_SECONDS): all are busy or starting; "
                                  "retry shortly",
                                  headers={"Retry-After": str(BUSY_RETRY_AFTER)}) from None
    if "error" in body:
        raise RemoteProblem(body["error"])  # the worker's problem document, as it made it
    body["seconds"] = round(time.perf_counter() - start, 4)
    return body
