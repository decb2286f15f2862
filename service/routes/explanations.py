"""``/v1/explanations``: submit, follow, fetch and cancel explanation jobs."""

from __future__ import annotations

import io
import json
import re
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import ValidationError

from pda import catalog
from pda import document as docs
from pda.costs import check_job
from pda.errors import (
    JobTooLargeError,
    ModelLoadError,
    ModelNotInstalledError,
    UnknownTargetError,
)
from pda.jobs import deliveries, lifecycle
from pda.jobs.lifecycle import Submission
from pda.jobs.record import JobRecord
from pda.jobs.store import JobStore
from pda.params import ExplainParams, check_against_model, plan, with_preset
from pda.problems import invalid
from pda.render import BAR_WIDTH, render_overlay

from .. import callbacks, forms, overlays, resources
from ..deps import OwnerDep, StateDep, StoreDep
from ..jobs_view import (
    expired,
    job_public,
    require_results,
    retry_after,
    unknown_job,
)
from ..limits import caller_of
from ..metrics import JOBS_SUBMITTED
from ..schemas import ExplanationPublic, ResultDocument
from ..uploads import decode_slot, decode_upload, read_upload

router = APIRouter(prefix="/v1/explanations", tags=["explanations"])



#: what new_job_id() makes (22 URL-safe characters), with room to change it
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: an overlay's drawn photo (or input), pixels on its longer side: by default the photo's
#: own size up to DEFAULT_OVERLAY_SIDE; ``size`` asks for any side in the bounds (the
#: upper one bounds the API's memory: a 2048 px render peaked at 331 MiB, docs/api.md)
DEFAULT_OVERLAY_SIDE = docs.PHOTO_MAX_SIDE
MIN_OVERLAY_SIDE, MAX_OVERLAY_SIDE = 64, 2048


def _get_job(store: JobStore, job_id: str, owner: str) -> JobRecord:
    rec = store.get(job_id) if JOB_ID.fullmatch(job_id) else None
    # another caller's job is "not found": ids must not leak whether they exist
    if rec is None or rec.owner != owner:
        raise unknown_job(job_id)
    return rec


def _validate(state, data: bytes, raw: dict[str, Any]) -> tuple[ExplainParams, str, dict]:
    """Everything checked before anything is stored: params, image, model, layer, cap.

    Against the model's metadata (:mod:`pda.catalog`), never a loaded network."""
    params, info = params_of(state, raw)
    size = decode_upload(data, state.settings, info.get("input_size"))
    n = check_model(state, params, info)
    return params, info["name"], {**n, "image": {"width": size[0], "height": size[1]}}


def params_of(state, raw: dict[str, Any]) -> tuple[ExplainParams, dict[str, Any]]:
    """The explanation parameters and the model's metadata of a request's fields (the
    checks that need no image); 422 for a bad value."""
    raw = dict(raw)
    model_name = str(raw.pop("model", None) or state.settings.default_model)
    preset = raw.pop("preset", None)
    try:
        params = ExplainParams(**with_preset(raw, preset))
    except ValidationError as exc:
        raise invalid(exc) from exc
    return params, catalog.model_info(model_name, state.settings, state.conn,
                                      local_is_truth=state.embedded)


def check_model(state, params: ExplainParams, info: dict[str, Any]) -> dict[str, int]:
    """The checks of parameters against the model (installed, layer, memory, the pass
    cap); the job's plan (windows, forward passes)."""
    settings = state.settings
    if info.get("available") is False and info["source"] == "builtin":
        raise ModelNotInstalledError.of(info["name"], info["install"])
    if info.get("available") is False or not info.get("input_size"):
        raise ModelLoadError(info["description"])  # a model file with a broken sidecar
    check_against_model(params, info)
    check_job(params, tuple(info["input_size"]), memory_bytes=settings.worker_memory_bytes,
              cache_bytes=settings.sampler_cache_bytes, stats_path=settings.sampler_stats)
    n = plan(params, tuple(info["input_size"]))
    if n["forward_passes"] > settings.max_forward_passes:
        raise JobTooLargeError(
            f"samples/window/stride: this job needs {n['forward_passes']} forward passes, "
            f"over the limit of {settings.max_forward_passes} (PDA_MAX_FORWARD_PASSES); use "
            "a larger stride or window, or fewer samples",
            errors=[{"field": "samples", "message": "too many forward passes"}],
            forward_passes=n["forward_passes"])
    return n


def _accepted(state, rec: JobRecord, replayed: bool = False) -> JSONResponse:
    body = _public(state, rec)
    headers = {"Location": body["links"]["self"], "Retry-After": retry_after(rec)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=202, headers=headers)


@router.post("", status_code=202, response_model=ExplanationPublic,
             openapi_extra={"requestBody": forms.explanation_body()},
             callbacks=callbacks.EXPLANATION,
             responses={202: {"description": "accepted; poll the Location"}})
async def create_explanation(
    request: Request, state: StateDep, owner: OwnerDep,
    idempotency_key: str | None = Header(None, max_length=200),
) -> JSONResponse:
    """Submit an image for explanation; answers 202 with the job and its Location.

    Example: `curl -F image=@examples/chelsea.png http://127.0.0.1:8000/v1/explanations`
    (the default job), or `-F preset=paper` for the paper's settings.
    """
    data, raw, filename = await read_upload(request, state.settings)
    return await run_in_threadpool(_create, state, owner, caller_of(request, owner), data, raw,
                                   filename, idempotency_key)


def _create(state, owner: str, caller: str, data: bytes, raw: dict[str, Any], filename: str,
            idem_key: str | None) -> JSONResponse:
    raw = dict(raw)  # callback_url is the request's, not a parameter of the explanation
    callback_url = deliveries.check_url(state.settings, raw.pop("callback_url", None))
    params, model_name, info = _validate(state, data, raw)
    sub = Submission(owner=owner, caller=caller, model=model_name, params=params, image=data,
                     plan={"windows": info["windows"],
                           "forward_passes": info["forward_passes"]},
                     image_meta={**info["image"], "filename": filename[:200]},
                     idempotency_key=idem_key, callback_url=callback_url)
    rec, created = lifecycle.submit(state.store, state.queue, state.settings, sub)
    if created:
        JOBS_SUBMITTED.labels(model=model_name).inc()
    return _accepted(state, rec, replayed=not created)


@router.get("/{job_id}", response_model=ExplanationPublic)
def get_explanation(job_id: str, state: StateDep, owner: OwnerDep, response: Response):
    """The job: status, progress with ETA, prediction once known, links when finished."""
    rec = _get_job(state.store, job_id, owner)
    if rec.status.active:
        response.headers["Retry-After"] = retry_after(rec)
    return _public(state, rec)


def _public(state, rec: JobRecord) -> dict[str, Any]:
    """The job resource with its ETA (:func:`service.resources.explanation_now`)."""
    return resources.explanation_now(state.store, state.registry, rec)


def _file(store: JobStore, rec: JobRecord, name: str) -> bytes:
    require_results(rec)
    data = store.file(rec.id, name)
    if data is None:
        raise expired(rec)
    return data


def _results(store: JobStore, rec: JobRecord) -> tuple[dict, np.ndarray, np.ndarray]:
    """The stored document and grids of a finished job (rendered into what is served)."""
    document = json.loads(_file(store, rec, docs.DOCUMENT))
    relevance, counts = docs.unpack_grids(_file(store, rec, docs.GRIDS))
    return document, relevance, counts


@router.get("/{job_id}/relevance",
            responses={200: {"model": ResultDocument, "description": "the result document"}})
def get_relevance(job_id: str, store: StoreDep, owner: OwnerDep) -> Response:
    """The result document: prediction and one relevance grid (H x W) per target."""
    rec = _get_job(store, job_id, owner)
    document, relevance, _ = _results(store, rec)
    return Response(docs.result_json(document, relevance), media_type="application/json")


@router.get("/{job_id}/relevance.npy",
            responses={200: {"description": "float32 array (T, H, W), NumPy .npy format"}})
def get_relevance_npy(job_id: str, store: StoreDep, owner: OwnerDep) -> Response:
    """The relevance grids as a NumPy array (T, H, W) float32, targets in document order."""
    rec = _get_job(store, job_id, owner)
    relevance = docs.unpack_grids(_file(store, rec, docs.GRIDS))[0]
    return Response(docs.npy_bytes(relevance), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}.npy"'})


def _png(request: Request, png: bytes) -> Response:
    """PNG bytes as image/png, or as application/octet-stream to a client that asks for
    that and not for an image type (client generators map only that type to bytes)."""
    accept = request.headers.get("accept", "")
    binary = "application/octet-stream" in accept and "image/" not in accept
    return Response(png, media_type="application/octet-stream" if binary else "image/png")


@router.get("/{job_id}/overlay.png", responses={200: {"description": "the overlay PNG"}})
def get_overlay(
    request: Request, job_id: str, state: StateDep, owner: OwnerDep,
    target: int | None = Query(None, ge=0, description="default: the first target"),
    scale: Literal["shared", "own"] = Query(
        "shared", description="shared: one colour range for all targets of the job (as the "
        "viewer draws them); own: this target's own maximum"),
    view: Literal["photo", "input"] = Query(
        "photo", description="photo: over the whole uploaded photo, unexplained parts "
        "hatched; input: over the model input"),
    size: int | None = Query(
        None, ge=MIN_OVERLAY_SIDE, le=MAX_OVERLAY_SIDE,
        description="pixels on the longer side of the drawn photo (or input); the title "
        f"above and the colour bar ({BAR_WIDTH} px) beside it come on top. Default: the "
        f"photo's own size, or {DEFAULT_OVERLAY_SIDE} px on its longer side if it is "
        "larger; the input at twice the model's input size"),
) -> Response:
    """The overlay PNG for one target: red = evidence for, blue = against."""
    store = state.store
    rec = _get_job(store, job_id, owner)  # the record first: a cached PNG of a canceled,
    require_results(rec)  # deleted or expired job is never served
    targets = [t["target"] for t in rec.targets or []]
    chosen = targets[0] if target is None and targets else target
    if chosen not in targets:
        raise UnknownTargetError(f"job {job_id} has no overlay for target {target}; its "
                                 f"targets are {targets}")
    key = (rec.id, rec.finished_at, view, chosen, scale, size)
    png = overlays.CACHE.get(key)
    if png is None:
        png = _overlay(state, rec, targets.index(chosen), scale=scale, view=view, size=size)
        overlays.CACHE.put(key, png)
    return _png(request, png)


def _overlay(state, rec: JobRecord, index: int, *, scale: str, view: str,
             size: int | None) -> bytes:
    """Render one overlay from the stored files; the photo view is drawn with the stored
    content box (or, for a result stored before it was kept, one placed from the job's
    ``fit``), ``size`` (or :data:`DEFAULT_OVERLAY_SIDE` at most) pixels on its longer
    side: the stored display copy is smaller for a large photo (the worker keeps at least
    twice the model's input on its shorter side), so it is resampled to that size."""
    store = state.store
    document, relevance, counts = _results(store, rec)
    if view == "photo":
        return _render(state, docs.photo_overlay, document, relevance, counts, index,
                       _file(store, rec, docs.PHOTO), scale=scale, side=size,
                       fit=(rec.params or {}).get("fit"))
    image = np.asarray(Image.open(io.BytesIO(_file(store, rec, docs.INPUT))).convert("RGB"))
    return _render(state, render_overlay, document, relevance, counts, index,
                   input_image=image, scale=scale, view="input", side=size)


def _render(state, fn, *args, **kwargs) -> bytes:
    """Rendering takes a decode slot: a burst of overlay requests is bounded like uploads."""
    with decode_slot(state.settings):
        return fn(*args, **kwargs)


@router.get("/{job_id}/input.png", responses={200: {"description": "the input PNG"}})
def get_input(request: Request, job_id: str, store: StoreDep, owner: OwnerDep) -> Response:
    """The image exactly as the model saw it (resized and cropped, before normalisation)."""
    rec = _get_job(store, job_id, owner)
    return _png(request, _file(store, rec, docs.INPUT))


@router.delete("/{job_id}", response_model=ExplanationPublic)
def delete_explanation(job_id: str, state: StateDep, owner: OwnerDep):
    """Cancel the job (a running sweep stops within one batch) and delete its results."""
    rec = _get_job(state.store, job_id, owner)
    canceled = lifecycle.cancel(state.store, state.queue, rec)
    overlays.CACHE.drop(job_id)
    return job_public(canceled)
