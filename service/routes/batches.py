"""``/v1/batches``: many images in one request, each an ordinary explanation job.

The images come as repeated multipart ``image`` parts, as one zip or tar ``archive`` part,
or as JSON ``{"images": [{"filename", "data"}], ...}`` (base64). Starlette spools each
multipart part to a temporary file (in memory up to 1 MiB), so the API holds one image at
a time: it reads the parts twice from their files (first to count and fingerprint them,
then to check and store each), never all at once. The batch's record and its feeder are
:mod:`pda.jobs.batches`; its archive is streamed (:func:`get_batch_results`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import redis
from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from pda import batch_files
from pda import document as docs
from pda.errors import (
    BatchTooManyItemsError,
    IdempotencyConflictError,
    InvalidParameterError,
    MalformedFormError,
    ProblemError,
    TooManyOpenItemsError,
    UnknownBatchError,
    UnsupportedMediaTypeError,
    UploadTooLargeError,
)
from pda.jobs import deliveries, lifecycle
from pda.jobs.batches import Batches, item_entry, new_batch_id
from pda.jobs.lifecycle import Submission
from pda.jobs.record import JobStatus
from pda.problems import to_problem

from .. import callbacks, events, forms, overlays
from ..deps import AppState, OwnerDep, StateDep
from ..limits import batch_too_large, caller_of
from ..schemas import BatchPublic
from ..uploads import decode_upload, form_params, names_checked, parse_json
from .explanations import _overlay, check_model, params_of

router = APIRouter(prefix="/v1/batches", tags=["batches"])

BATCH_ID = re.compile(r"b_[A-Za-z0-9_-]{1,64}")
#: archive members that are not images: folders' metadata of macOS and hidden files
_SKIP = re.compile(r"(^|/)(__MACOSX/|\.)")
#: the archive's contact sheet: pixels per tile
TILE = 160

#: a source of one item: (filename, a function that reads its bytes, at most cap + 1)
Item = tuple[str, Callable[[int], bytes]]


def _body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/batches``."""
    single = forms.explanation_body()["content"]
    form = dict(single["multipart/form-data"]["schema"]["properties"])
    form.pop("image")
    params = single["application/json"]["schema"]["properties"]["params"]
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "image": {"type": "array", "items": forms.IMAGE,
                          "description": "the images: repeat the part (`-F image=@a.jpg -F "
                          "image=@b.jpg`), at most PDA_BATCH_MAX_ITEMS"},
                "archive": {"type": "string", "format": "binary",
                            "description": "instead of image parts: one zip or tar "
                            "(optionally gzip'd) holding the images (folders and hidden "
                            "files skipped)"},
                **form}}},
        "application/json": {"schema": {
            "type": "object", "required": ["images"], "additionalProperties": False,
            "description": "the parameters in `params`, or at the top level beside "
                           "`images` (a field in both: `params` wins)",
            "properties": {
                "images": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["data"], "properties": {
                        "filename": {"type": "string", "maxLength": 200},
                        "data": forms.IMAGE_BASE64}}},
                "params": params, **forms.META, **forms.param_properties(form=False)}},
            "example": {"images": [{"filename": "a.png", "data": forms.EXAMPLE_IMAGE}],
                        "params": forms.EXAMPLE_PARAMS}},
    }}


def _get_batch(state: AppState, batch_id: str, owner: str) -> Batches:
    batches = Batches(state.store, state.settings)
    rec = batches.get(batch_id) if BATCH_ID.fullmatch(batch_id) else None
    if rec is None or rec.get("owner") != owner:  # another key's batch is unknown, as jobs
        raise UnknownBatchError(f"no batch {batch_id!r} (unknown, expired, or not yours)")
    return batches


def _public(state: AppState, batches: Batches, batch_id: str) -> dict[str, Any]:
    """The batch as its GET answers it (a batch whose items all ended is ended first)."""
    with suppress(redis.exceptions.WatchError):
        batches.finalize(batch_id)
    body = batches.public(batch_id, workers=state.registry.alive_count())
    return BatchPublic.model_validate(body).model_dump(mode="json")


def _accepted(body: dict[str, Any], replayed: bool) -> JSONResponse:
    headers = {"Location": body["links"]["self"], "Retry-After": "2"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=202, headers=headers)


@router.post("", status_code=202, response_model=BatchPublic,
             openapi_extra={"requestBody": _body()}, callbacks=callbacks.BATCH,
             responses={202: {"description": "accepted; poll the Location"}})
async def create_batch(
    request: Request, state: StateDep, owner: OwnerDep,
    idempotency_key: str | None = Header(None, max_length=200),
) -> JSONResponse:
    """Submit many images with one set of parameters; 202 with the batch and its Location.

    Example: `curl -F image=@a.jpg -F image=@b.jpg -F sampler=marginal
    http://127.0.0.1:8000/v1/batches`, or `-F archive=@photos.zip`.
    """
    settings = state.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form = None
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=settings.batch_max_items + 1,
                                      max_fields=100)
        except ProblemError:
            raise
        except MultiPartException as exc:
            if "Too many files" in str(exc):
                raise _too_many(settings, settings.batch_max_items + 1) from exc
            raise MalformedFormError(f"cannot parse the multipart body: {exc}") from exc
        except Exception as exc:
            raise MalformedFormError(f"cannot parse the multipart body: {exc}") from exc
        body: Any = None
    elif ctype in ("application/json", ""):
        raw = await request.body()
        if len(raw) > settings.batch_max_bytes:
            raise batch_too_large(settings)
        body = parse_json(raw)
    else:
        raise UnsupportedMediaTypeError(
            "send multipart/form-data with repeated 'image' parts or one 'archive', or "
            f"application/json with 'images'; got {ctype!r}")
    try:
        return await run_in_threadpool(_create, state, owner, caller_of(request, owner),
                                       form, body, idempotency_key)
    finally:
        if form is not None:
            await form.close()


def _too_many(settings, count: int) -> BatchTooManyItemsError:
    return BatchTooManyItemsError(
        f"{count} images or more; the limit is {settings.batch_max_items} per batch "
        "(PDA_BATCH_MAX_ITEMS): split them into several batches", field="image",
        limit=settings.batch_max_items)


def _sources(form, body) -> tuple[list[Item], dict[str, Any]]:
    """The items (each read when needed) and the raw parameters of the request."""
    if form is not None:
        params = names_checked(form_params(form, files=("image", "archive")))
        images = form.getlist("image")
        archive = form.get("archive")
        if archive is not None and not isinstance(archive, UploadFile):
            raise InvalidParameterError("archive: must be a file (-F archive=@photos.zip)",
                                        field="archive")
        if any(not isinstance(u, UploadFile) for u in images):
            raise InvalidParameterError("image: each must be a file (-F image=@a.jpg)",
                                        field="image")
        if archive is not None and images:
            raise InvalidParameterError("send the images as 'image' parts or in one "
                                        "'archive', not both", field="archive")
        if archive is not None:
            return _archive_items(archive), params
        return [(u.filename or f"image-{i}", _reader(u)) for i, u in enumerate(images)], params
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise InvalidParameterError("send a JSON object with 'images': [{\"filename\": ..., "
                                    "\"data\": base64}, ...]", field="images")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise InvalidParameterError("params: must be an object", field="params")
    params = dict(params)
    for key, value in body.items():  # parameters at the top level too
        if key not in ("images", "params") and key not in params:
            params[key] = value
    items = []
    for i, entry in enumerate(body["images"]):
        if not isinstance(entry, dict):
            raise InvalidParameterError(f"images[{i}]: must be an object with 'data'",
                                        field=f"images.{i}")
        items.append((str(entry.get("filename") or f"image-{i}")[:200],
                      _b64_reader(entry.get("data"))))
    return items, names_checked(params)


def _reader(upload: UploadFile) -> Callable[[int], bytes]:
    def read(cap: int) -> bytes:
        upload.file.seek(0)
        return upload.file.read(cap)
    return read


def _b64_reader(data: Any) -> Callable[[int], bytes]:
    def read(cap: int) -> bytes:
        if not isinstance(data, str) or not data:
            raise InvalidParameterError("data: send the image file in base64",
                                        field="data")
        text = data.split(",", 1)[1] if data.startswith("data:") and "," in data[:100] \
            else data
        try:
            return base64.b64decode(text, validate=True)[:cap]
        except (binascii.Error, ValueError) as exc:
            raise InvalidParameterError(f"data: not valid base64 ({exc})",
                                        field="data") from exc
    return read


def _archive_items(upload: UploadFile) -> list[Item]:
    """The image members of a zip or tar archive, in archive order, each read alone."""
    f = upload.file
    f.seek(0)
    if zipfile.is_zipfile(f):
        f.seek(0)
        z = zipfile.ZipFile(f)
        members = [m for m in z.infolist() if not m.is_dir() and not _SKIP.search(m.filename)]

        def zread(m: zipfile.ZipInfo) -> Callable[[int], bytes]:
            def read(cap: int) -> bytes:
                with z.open(m) as member:  # its declared size is not trusted: read at most cap
                    return member.read(cap)
            return read
        return [(m.filename, zread(m)) for m in members]
    f.seek(0)
    try:
        t = tarfile.open(fileobj=f, mode="r:*")
    except tarfile.TarError:  # the archive itself is the one item, and it fails alone

        def refused(cap: int) -> bytes:
            raise UnsupportedMediaTypeError("archive: not a zip or tar archive (a tar may "
                                            "be gzip, bzip2 or xz compressed)")
        return [(upload.filename or "archive", refused)]
    members = [m for m in t.getmembers() if m.isfile() and not _SKIP.search(m.name)]

    def tread(m: tarfile.TarInfo) -> Callable[[int], bytes]:
        def read(cap: int) -> bytes:
            member = t.extractfile(m)
            return member.read(cap) if member is not None else b""
        return read
    return [(m.name, tread(m)) for m in members]


def _create(state: AppState, owner: str, caller: str, form, body,
            idem_key: str | None) -> JSONResponse:
    settings, store = state.settings, state.store
    items, raw = _sources(form, body)
    if not items:
        raise InvalidParameterError("no images: repeat the 'image' part, send an 'archive', "
                                    "or list 'images'", field="image")
    if len(items) > settings.batch_max_items:
        raise _too_many(settings, len(items))
    callback_url = deliveries.check_url(settings, raw.pop("callback_url", None))
    params, info = params_of(state, raw)
    n = check_model(state, params, info)
    model = info["name"]
    # the batch's fingerprint: its parameters and every image, read one at a time
    canon = json.dumps({"model": model, "params": params.model_dump(mode="json")},
                       sort_keys=True)
    digest = hashlib.sha256(canon.encode())
    for name, read in items:
        with suppress(ProblemError):
            digest.update(name.encode() + b"\0" + hashlib.sha256(
                read(settings.max_upload_bytes + 1)).digest())
    fingerprint = digest.hexdigest()
    batches = Batches(store, settings)
    if idem_key and (prior := store.lookup("batch-idem", owner, idem_key)):
        rec = batches.get(prior)
        if rec is not None:
            if rec.get("digest") != fingerprint:
                raise IdempotencyConflictError(
                    "this Idempotency-Key was used for a different batch")
            return _accepted(_public(state, batches, prior), replayed=True)
    with batches.submit_lock(owner):
        open_items = batches.open_items(owner)
        if open_items + len(items) > settings.batch_max_open_items:
            raise TooManyOpenItemsError(
                f"this API key has {open_items} batch items not yet ended; {len(items)} "
                f"more would pass the limit of {settings.batch_max_open_items} "
                "(PDA_BATCH_MAX_OPEN_ITEMS); wait for some to end, or cancel a batch",
                limit=settings.batch_max_open_items, open_items=open_items)
        batch_id = new_batch_id()
        batches.begin(batch_id, owner=owner, model=model,
                      params=params.model_dump(mode="json"), callback_url=callback_url,
                      digest=fingerprint)
        try:
            for index, (name, read) in enumerate(items):
                entry, passes = _item(state, owner, caller, batch_id, index, name, read,
                                      params, model, info, n)
                batches.add(batch_id, entry, passes)
            batches.complete(batch_id)
        except BaseException:
            with suppress(redis.RedisError):
                batches.drop(batch_id)
            raise
    if idem_key and not store.remember("batch-idem", owner, idem_key, batch_id,
                                       settings.result_ttl_seconds):
        # a concurrent retry with the same key stored its batch first: answer with that
        other = store.lookup("batch-idem", owner, idem_key)
        if other and other != batch_id and batches.get(other) is not None:
            batches.cancel(batch_id)
            return _accepted(_public(state, batches, other), replayed=True)
    with suppress(redis.RedisError):
        batches.tick()
    return _accepted(_public(state, batches, batch_id), replayed=False)


def _item(state: AppState, owner: str, caller: str, batch_id: str, index: int, name: str,
          read: Callable[[int], bytes], params, model: str, info: dict[str, Any],
          n: dict[str, int]) -> tuple[dict[str, Any], int]:
    """Check and store one image: its item entry and the forward passes of its job."""
    settings = state.settings
    filename = name[:200]
    try:
        data = read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise UploadTooLargeError(settings.max_upload_bytes)
        size = decode_upload(data, settings, info.get("input_size"))
    except ProblemError as exc:  # this image alone is refused: the others run
        return item_entry(index, filename, error=to_problem(
            exc, instance=f"/v1/batches/{batch_id}/items/{index}")), 0
    sub = Submission(owner=owner, caller=caller, model=model, params=params, image=data,
                     plan={"windows": n["windows"], "forward_passes": n["forward_passes"]},
                     image_meta={"width": size[0], "height": size[1], "filename": filename},
                     batch=batch_id)
    rec, created = lifecycle.submit(state.store, state.queue, settings, sub)
    return item_entry(index, filename, job=rec.id, own=created), \
        rec.progress_total or rec.planned_passes


@router.get("/{batch_id}", response_model=BatchPublic)
def get_batch(batch_id: str, state: StateDep, owner: OwnerDep, response: Response):
    """The batch: status, counts, progress over all items, ETA, and each item."""
    batches = _get_batch(state, batch_id, owner)
    body = _public(state, batches, batch_id)
    if body["status"] in ("queued", "running"):
        response.headers["Retry-After"] = "2"
    return body


@router.delete("/{batch_id}", response_model=BatchPublic)
def delete_batch(batch_id: str, state: StateDep, owner: OwnerDep):
    """Cancel every item not yet ended; finished items keep their results until they
    expire (PDA_RESULT_TTL_SECONDS)."""
    batches = _get_batch(state, batch_id, owner)
    with suppress(redis.exceptions.WatchError):
        batches.cancel(batch_id)
    for item in batches.items(batch_id):
        if item.get("job"):
            overlays.CACHE.drop(item["job"])
    return _public(state, batches, batch_id)


def batch_snapshot(state: AppState, batch_id: str, owner: str | None = None
                   ) -> events.Snapshot | None:
    """The batch's event now: ``id`` the sum of its record's and its jobs' versions."""
    if owner is not None:
        batches = _get_batch(state, batch_id, owner)
    else:
        batches = Batches(state.store, state.settings)
        if batches.get(batch_id) is None:
            return None
    body = _public(state, batches, batch_id)
    return events.Snapshot(batches.version(batch_id), body,
                           final=body["status"] in ("finished", "canceled"))


def batch_source(state: AppState, batch_id: str) -> events.Source:
    from pda import keys

    batches = Batches(state.store, state.settings)
    versions = ((keys.batch(batch_id), "version"),) + tuple(
        (keys.job(i["job"]), "version") for i in batches.items(batch_id) if i.get("job"))
    return events.Source(f"batch:{batch_id}", versions,
                         lambda: batch_snapshot(state, batch_id))


@router.get("/{batch_id}/events", response_class=events.EventStreamResponse,
            responses={200: {"description": "text/event-stream: one event per change of "
                             "the batch or of one of its items (at most 4 a second), `id` "
                             "its version, `data` the batch as GET /v1/batches/{id} returns "
                             "it; the stream ends after the final status (finished, "
                             "canceled)"},
                       204: {"description": "resumed (Last-Event-ID) after the batch's "
                             "final event: nothing newer to send"}})
async def get_batch_events(
    batch_id: str, request: Request, state: StateDep, owner: OwnerDep,
    last_event_id: str | None = Header(
        None, max_length=32, description="the id of the last event received: only newer "
        "ones are sent"),
) -> Response:
    """Follow the batch live (server-sent events) instead of polling it: `curl -N`."""
    seed = await run_in_threadpool(batch_snapshot, state, batch_id, owner)
    source = await run_in_threadpool(batch_source, state, batch_id)
    return events.respond(request, source, seed, events.last_event_id(last_event_id))


class _Sink:
    """A write-only, non-seekable file for :class:`zipfile.ZipFile`: what is written is
    taken away by the response a piece at a time (the archive is never whole here)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


@router.get("/{batch_id}/results.zip",
            responses={200: {"content": {"application/zip": {}}, "description": "a zip, "
                             "streamed: per finished item a folder (0000-name) with "
                             "result.json, relevance.npy and overlay.png; summary.json; "
                             "contact-sheet.png"}})
def get_batch_results(request: Request, batch_id: str, state: StateDep,
                      owner: OwnerDep) -> Response:
    """Every finished item's files, `summary.json` and `contact-sheet.png`, as one zip
    written while it is sent (at any time: items not finished are in the summary with
    their status). As application/octet-stream to a client that asks for that and not
    for a zip (client generators map only that type to bytes)."""
    batches = _get_batch(state, batch_id, owner)
    body = _public(state, batches, batch_id)
    accept = request.headers.get("accept", "")
    binary = "application/octet-stream" in accept and "application/zip" not in accept
    return StreamingResponse(_archive(state, body), media_type="application/octet-stream"
                             if binary else "application/zip",
                             headers={"Content-Disposition":
                                      f'attachment; filename="{batch_id}.zip"'})


def _archive(state: AppState, body: dict[str, Any]) -> Iterator[bytes]:
    store = state.store
    sink = _Sink()
    entries: list[dict[str, Any]] = []
    overlay_of: dict[int, str] = {}
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED) as z:
        for item in body["items"]:
            index, name = item["index"], item["filename"]
            folder = batch_files.item_folder(index, name)
            document = None
            status, error = item["status"], item["error"]
            rec = store.get(item["id"]) if item["id"] and status == "finished" else None
            raw_doc = store.file(rec.id, docs.DOCUMENT) if rec is not None else None
            grids = store.file(rec.id, docs.GRIDS) if rec is not None else None
            if rec is not None and raw_doc is not None and grids is not None:
                document = json.loads(raw_doc)
                relevance, _ = docs.unpack_grids(grids)
                z.writestr(f"{folder}/result.json", docs.result_json(document, relevance))
                z.writestr(f"{folder}/relevance.npy", docs.npy_bytes(relevance))
                del relevance, grids
                yield sink.take()
                png = _overlay(state, rec, 0, scale="shared", view="photo", size=None)
                z.writestr(f"{folder}/overlay.png", png, compress_type=zipfile.ZIP_STORED)
                overlay_of[index] = rec.id
                del png
                yield sink.take()
            elif status == "finished":  # its results expired meanwhile
                status, error = "failed", {"type": "/problems/gone", "title": "Results "
                                           "expired", "status": 410,
                                           "detail": "the item's results expired"}
            entries.append(batch_files.summary_entry(
                index=index, filename=name, status=status, document=document, error=error,
                seconds=rec.seconds if rec is not None else None))
        summary = batch_files.summary_document(entries, body["params"])
        summary.update(batch=body["id"], status=body["status"])
        z.writestr(batch_files.SUMMARY, json.dumps(summary, indent=1))
        yield sink.take()
        tiles = [(batch_files.tile_caption(e), _thumb(state, overlay_of.get(e["index"])))
                 for e in entries]
        z.writestr(batch_files.CONTACT_SHEET, batch_files.contact_sheet(tiles, tile=TILE),
                   compress_type=zipfile.ZIP_STORED)
    yield sink.take()


def _thumb(state: AppState, job_id: str | None) -> Callable[[], bytes | None]:
    """A contact-sheet tile: the item's overlay drawn small, when the sheet draws it."""
    def draw() -> bytes | None:
        rec = state.store.get(job_id) if job_id else None
        if rec is None or rec.status != JobStatus.FINISHED:
            return None
        try:
            return _overlay(state, rec, 0, scale="shared", view="photo", size=TILE)
        except ProblemError:
            return None
    return draw

