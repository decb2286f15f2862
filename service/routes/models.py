"""``/v1/models`` and ``/v1/predictions``: what can be served, and plain top-k."""

from __future__ import annotations

import re
import time

import torch
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from pda import catalog
from pda.engine.explain import predict
from pda.engine.inputs import preprocess
from pda.errors import UnknownModelError
from pda.images import open_image
from pda.models.registry import get_model

from ..deps import OwnerDep, StateDep
from ..problems import Problem
from ..schemas import ModelDetail, ModelPublic, PredictionPublic
from ..uploads import read_upload

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=list[ModelPublic])
def list_models_route(state: StateDep, owner: OwnerDep):
    """The models this installation can serve (available = weights installed)."""
    return catalog.list_models(state.settings, state.conn, local_is_truth=state.embedded)


@router.get("/models/{name}", response_model=ModelDetail)
def get_model_route(name: str, state: StateDep, owner: OwnerDep):
    """One model's metadata, with its layers (names, channels, output sizes)."""
    try:
        return catalog.model_info(name, state.settings, state.conn,
                                  local_is_truth=state.embedded)
    except UnknownModelError as exc:
        raise Problem(404, "Unknown model", f"{exc}; see /v1/models",
                      type_="/problems/unknown-model") from exc


@router.post("/predictions", response_model=PredictionPublic,
             openapi_extra={"x-codeSamples": [{"lang": "curl", "source":
                            "curl -F image=@examples/chelsea.png "
                            "http://127.0.0.1:8000/v1/predictions"}]})
async def create_prediction(request: Request, state: StateDep, owner: OwnerDep):
    """Synchronous top-k classes for one image (multipart 'image' or JSON image_base64)."""
    data, raw, _ = await read_upload(request, state.settings)
    return await run_in_threadpool(_predict, state, data, raw)


def _predict(state, data: bytes, raw: dict) -> dict:
    settings = state.settings
    name = str(raw.get("model") or settings.default_model)
    top_raw = str(raw.get("top", "5")).strip()
    # ASCII digits only: '²'.isdigit() is True, and int('²') raises
    if not re.fullmatch(r"[0-9]{1,3}", top_raw) or not 1 <= int(top_raw) <= 20:
        raise Problem(422, "Invalid parameters", "top: must be an integer from 1 to 20",
                      type_="/problems/invalid-parameter",
                      errors=[{"field": "top", "message": "must be 1..20"}])
    image = open_image(data, max_pixels=settings.max_image_pixels)
    model = get_model(name, "cpu", settings, allow_paths=False)
    x, _ = preprocess(image, model.input_size)
    start = time.perf_counter()
    with torch.inference_mode():
        pred = predict(model, x, top=int(top_raw))
    return {"model": model.name, "input_size": list(model.input_size), "prediction": pred,
            "seconds": round(time.perf_counter() - start, 4)}
