"""``/v1/models`` and ``/v1/predictions``: what can be served, and plain top-k."""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from pda.engine.explain import predict
from pda.images import open_image, preprocess
from pda.models.registry import get_model, list_models

from ..deps import OwnerDep, SettingsDep, StateDep
from ..problems import Problem
from ..schemas import ModelPublic, PredictionPublic
from ..uploads import read_upload

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=list[ModelPublic])
def list_models_route(settings: SettingsDep, owner: OwnerDep):
    """The models this installation can serve (available = weights present)."""
    return list_models(settings)


@router.get("/models/{name}", response_model=ModelPublic)
def get_model_route(name: str, settings: SettingsDep, owner: OwnerDep):
    """One model's metadata."""
    for m in list_models(settings):
        if m["name"] == name:
            return m
    raise Problem(404, "Unknown model", f"no model named {name!r}; see /v1/models",
                  type_="/problems/unknown-model")


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
    top_raw = str(raw.get("top", "5"))
    if not top_raw.isdigit() or not 1 <= int(top_raw) <= 20:
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
