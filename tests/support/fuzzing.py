"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.support.fuzzing``): real images in the
uploads, and the one kind of failure the schema cannot rule out.

- Every multipart ``image`` and JSON ``image_base64`` that Schemathesis generated as a
  valid value is replaced with a real image (a few formats and sizes, all large enough to
  explain), so generated requests get past the decoder and reach the parameter checks,
  the queue and the workers. A value generated as invalid (the negative cases: a number,
  an object, a non-base64 string) is left alone, so those still test the refusal.
- ``positive_data_acceptance`` expects a schema-valid request to be accepted. The schema
  cannot say what depends on the model or the deployment (a window larger than the
  model's input, class indices the model has, a layer it has, the forward-pass cap, a
  drill-down's stride geometry): those are 422 problems naming the field. A 422 on a
  schema-valid request is dropped here only when the parameter model itself accepts the
  request's parameters (pydantic, from which the schema is generated), i.e. only when the
  refusal is one of those checks beyond the schema; a disagreement between the schema
  and the parameter model still fails the run.
- ``use_after_free`` expects what a DELETE removed to answer 404. Here DELETE cancels: the
  job resource stays, as a canceled record whose status is what a caller polls for (the
  contract's ``canceled``), while its results answer 410. A GET of the job after its
  DELETE is dropped only when it answers that the job is canceled; a result route that
  still answered 200 after the DELETE would fail the run. A batch's DELETE cancels its
  items not yet ended, and the batch (its resource, ``canceled``) and the results of its
  finished items stay (docs/api.md, "Batches"): its GET and results.zip answer 200.
- A batch's ``image`` parts, ``archive`` (a zip of two real images) and JSON ``images``
  are real images too, the same way.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import os
import zipfile
from typing import Any

import schemathesis
from PIL import Image
from pydantic import ValidationError

from pda.params import ExplainParams, PredictParams, with_preset

from .paths import CAT


def _images() -> list[bytes]:
    photo = Image.open(CAT).convert("RGB")
    out = []
    for size, fmt in (((451, 300), "PNG"), ((240, 160), "JPEG"), ((96, 128), "WEBP"),
                      ((64, 48), "GIF")):
        buf = io.BytesIO()
        photo.resize(size).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


IMAGES = _images()
#: an environment variable naming a file where each dropped failure's detail is appended
DROPPED_LOG = "FUZZ_DROPPED_LOG"
_next = itertools.cycle(IMAGES)


def _valid_base64(value: Any) -> bool:
    if not isinstance(value, str) or len(value) < 4:
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", IMAGES[0])
        z.writestr("photos/b.jpg", IMAGES[1])
    return buf.getvalue()


ARCHIVE = _archive()


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if isinstance(body, dict):
        if isinstance(body.get("image"), bytes | str):  # any string is valid binary
            body["image"] = next(_next)
        if isinstance(body.get("image"), list):  # a batch's parts
            body["image"] = [next(_next) if isinstance(v, bytes | str) else v
                             for v in body["image"]]
        archive = body.get("archive")  # any file value (a generator's Binary too)
        if archive is not None and not isinstance(archive, int | float | bool | dict | list):
            body["archive"] = ARCHIVE
        if _valid_base64(body.get("image_base64")):
            body["image_base64"] = base64.b64encode(next(_next)).decode()
        if isinstance(body.get("images"), list):  # a batch in JSON
            for item in body["images"]:
                if isinstance(item, dict) and _valid_base64(item.get("data")):
                    item["data"] = base64.b64encode(next(_next)).decode()
    return case


def _canceled_job(case, response) -> bool:
    """The job resource, answering that the job is canceled: what DELETE promises."""
    if case.path != "/v1/explanations/{job_id}" or response.status_code != 200:
        return False
    try:
        return response.json()["status"] == "canceled"
    except (ValueError, KeyError, TypeError):
        return False


def _canceled_batch(case, response) -> bool:
    """A batch read after its DELETE: the batch (canceled) and its archive stay."""
    if not case.path.startswith("/v1/batches/{batch_id}") or response.status_code != 200:
        return False
    if case.path.endswith("/results.zip"):
        return True
    try:
        return response.json()["status"] in ("canceled", "finished")
    except (ValueError, KeyError, TypeError):
        return False


def _params(case) -> tuple[type, dict[str, Any]] | None:
    """The parameter model and the parameters a request sent, as the schema reads them."""
    body = case.body if isinstance(case.body, dict) else {}
    batch = case.path == "/v1/batches"
    if case.media_type == "application/json":
        params = body.get("params") or {}
        params = dict(params) if isinstance(params, dict) else {}
        for key in ("model", "preset"):
            if key in body:
                params.setdefault(key, body[key])
        if batch:  # a batch's parameters may sit beside its images
            for key, value in body.items():
                if key not in ("images", "params", "callback_url"):
                    params.setdefault(key, value)
    else:
        params = {k: v for k, v in body.items()
                  if k not in ("image", "archive") and v is not None}
        if isinstance(params.get("fill"), str):
            params["fill"] = [float(v) for v in params["fill"].split(",")]
    model = ExplainParams if case.path in ("/v1/explanations", "/v1/batches") \
        else PredictParams
    return model, params


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep every failure but a 422 to a schema-valid request whose parameters the
    parameter model accepts, and a canceled job shown after its DELETE (see the module's
    docstring)."""
    kind = type(failure).__name__
    if kind == "UseAfterFree":
        return not (_canceled_job(case, response) or _canceled_batch(case, response))
    if kind != "RejectedPositiveData" or response.status_code != 422:
        return True
    found = _params(case)
    if found is None:
        return True
    model, params = found
    try:
        if model is ExplainParams:
            params.pop("model", None)
            preset = params.pop("preset", None)
            ExplainParams(**with_preset(params, preset))
        else:
            model(**params)
    except ValidationError as exc:
        # a field's own check is one the schema should have said (a real finding); a
        # check across fields (a model validator: no location) is not one it can say
        if any(err["loc"] for err in exc.errors()):
            return True
    except ValueError:  # an unknown preset: the schema's enum should have said so
        return True
    if log := os.environ.get(DROPPED_LOG):  # what was dropped, for the test to show
        with open(log, "a") as f:
            f.write(json.dumps(response.json().get("detail", "")[:200]) + "\n")
    return False
