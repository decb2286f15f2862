"""Reading a request's image and parameters: multipart form or JSON with base64."""

from __future__ import annotations

import base64
import binascii
import json
import threading
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from pda.defaults import PRESETS
from pda.errors import (
    InvalidParameterError,
    MalformedFormError,
    MalformedJSONError,
    ProblemError,
    UnsupportedMediaTypeError,
    UploadTooLargeError,
)
from pda.images import check_min_side, open_image, original_size
from pda.settings import Settings

from . import memory
from .forms import FORM_NULL, NULLABLE_FORM_FIELDS, parse_fill
from .limits import body_limit

#: form and JSON fields that are not explanation parameters
META_FIELDS = ("model", "preset", "callback_url")
#: the longest model or preset name (the schema's maxLength)
MAX_NAME = 200


#: one process-wide bound on concurrent decodes (set from PDA_MAX_CONCURRENT_DECODES by the
#: first caller): a burst of large uploads waits its turn instead of holding one decoded
#: image per request in memory at once
_decode_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


def decode_slot(settings: Settings) -> threading.BoundedSemaphore:
    global _decode_slots
    with _slots_lock:
        if _decode_slots is None:
            _decode_slots = threading.BoundedSemaphore(settings.max_concurrent_decodes)
        return _decode_slots


def decode_upload(data: bytes, settings: Settings, input_size: list[int] | None
                  ) -> tuple[int, int]:
    """Decode the upload once to refuse corrupt, truncated, too large or too small images
    before anything is stored; returns its size (w, h) after EXIF orientation.

    Only what the model needs is decoded (:func:`pda.images.open_image` ``fit_to``), at
    most ``PDA_MAX_CONCURRENT_DECODES`` at a time, and the memory goes back to the system
    when the last decode of a burst ends (:func:`service.memory.release_if_idle`)."""
    fit_to = tuple(input_size) if input_size else None
    slots = decode_slot(settings)
    with slots:
        try:
            img = open_image(data, max_pixels=settings.max_image_pixels, fit_to=fit_to)
            size = original_size(img)
            del img
        finally:
            memory.release_if_idle(slots, settings.max_concurrent_decodes)
    check_min_side(size)
    return size


async def read_upload(request: Request, settings: Settings) -> tuple[bytes, dict[str, Any], str]:
    """(image bytes, raw parameters, file name) from a multipart or JSON request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return _names_checked(await _from_form(request, settings))
    if ctype in ("application/json", ""):
        return _names_checked(await _from_json(request, settings))
    raise UnsupportedMediaTypeError(
        f"send multipart/form-data with a file field 'image', or application/json with "
        f"'image_base64'; got {ctype!r}")


async def _from_form(request: Request, settings: Settings) -> tuple[bytes, dict[str, Any], str]:
    try:
        form = await request.form(max_files=2, max_fields=50)
    except ProblemError:  # the body passed the byte cap while streaming in
        raise
    except Exception as exc:  # malformed multipart
        raise MalformedFormError(f"cannot parse the multipart body: {exc}") from exc
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise _missing_image("multipart field 'image' must be a file "
                             "(curl -F image=@photo.jpg)")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLargeError(settings.max_upload_bytes)
    return data, form_params(form), upload.filename or "upload"


def form_params(form: Any, files: tuple[str, ...] = ("image",)) -> dict[str, Any]:
    """The explanation parameters of a multipart form: every field but the ``files``."""
    params: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key in files:
            continue
        if not isinstance(value, str):
            raise InvalidParameterError(f"{key}: must be a plain value, not a file",
                                        errors=[{"field": key, "message": "must not be a file"}])
        # a form has no null: where the schema allows null (forms.NULLABLE_FORM_FIELDS)
        # an empty value is unset, and so is `null`, which is how a client generated from
        # the schema writes an unset nullable field. Anything else is validated as sent
        # (no stripping, no dropping of empty values), so the form accepts exactly what
        # its schema says: the viewer and generated clients leave unset fields out
        if key in NULLABLE_FORM_FIELDS and value.strip() in ("", FORM_NULL):
            continue
        params[key] = value
    if isinstance(params.get("fill"), str):
        params["fill"] = parse_fill(params["fill"])
    return params


async def _from_json(request: Request, settings: Settings) -> tuple[bytes, dict[str, Any], str]:
    raw = await request.body()
    if len(raw) > body_limit(settings, "application/json"):
        raise UploadTooLargeError(settings.max_upload_bytes)
    body = parse_json(raw)
    if not isinstance(body, dict) or "image_base64" not in body:
        raise _missing_image("send a JSON object with 'image_base64' (and optional 'params')")
    b64 = body["image_base64"]
    if not isinstance(b64, str):
        raise _missing_image("'image_base64' must be a base64 string")
    if "," in b64[:100] and b64.startswith("data:"):
        b64 = b64.split(",", 1)[1]  # a data: URL
    if not b64:  # the schema's minLength: a 422 for the field, not a 415 for 0 bytes
        raise InvalidParameterError(
            "image_base64: empty; send the image file in base64",
            errors=[{"field": "image_base64", "message": "empty"}])
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidParameterError(
            f"image_base64: not valid base64 ({exc})",
            errors=[{"field": "image_base64", "message": "not valid base64"}]) from exc
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLargeError(settings.max_upload_bytes)
    params = body.get("params", {})
    if not isinstance(params, dict):  # null too: the schema says an object
        raise InvalidParameterError("params: must be an object", field="params")
    params = dict(params)
    for key in META_FIELDS:  # accept model/preset at the top level too
        if key in body and key not in params:
            params[key] = body[key]
    return data, params, str(body.get("filename") or "upload")


def _names_checked(upload: tuple[bytes, dict[str, Any], str]
                   ) -> tuple[bytes, dict[str, Any], str]:
    names_checked(upload[1])
    return upload


def names_checked(params: dict[str, Any]) -> dict[str, Any]:
    """``model`` and ``preset``, when sent, are names: strings of at most MAX_NAME (not
    null: the schema says string); a preset is one of the presets."""
    for key in ("model", "preset"):
        if key in params and not (isinstance(params[key], str)
                                  and len(params[key]) <= MAX_NAME):
            raise InvalidParameterError(f"{key}: must be a name (a string of at most "
                                        f"{MAX_NAME} characters)", field=key)
    if params.get("preset") == "":  # the schema's enum; with_preset reads "" as no preset
        raise InvalidParameterError(f"preset: empty; use one of {', '.join(PRESETS)}, or "
                                    "leave it out", field="preset")
    return params


def parse_json(raw: bytes) -> Any:
    """The JSON body, or a 400 problem that says why not: malformed, nested too deeply
    (``[[[[...`` 50,000 deep overflows the parser's stack), or an integer too long to
    convert (Python refuses more than 4,300 digits)."""
    try:
        return json.loads(raw or b"null")
    except RecursionError as exc:
        raise MalformedJSONError("the JSON body nests arrays or objects too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the int digit limit
        reason = str(exc).splitlines()[0][:200]
        raise MalformedJSONError(f"the body is not valid JSON: {reason}") from exc


def _missing_image(detail: str) -> InvalidParameterError:
    return InvalidParameterError(detail, field="image")
