"""Request bodies derived from the one parameter model, :class:`pda.params.ExplainParams`.

The multipart form and the JSON body of ``POST /v1/explanations`` accept the same
fields; their OpenAPI schemas are generated here from the model's JSON schema (and the
CLI's flags from the same model, in :mod:`pda.cli`), so they cannot drift apart.
"""

from __future__ import annotations

import base64
import copy
import io
import re
from typing import Any

from pda.defaults import (
    DEFAULT_FAITHFULNESS,
    DEFAULT_STRIDE,
    DEFAULT_WINDOW,
    PRESET_HELP,
    PRESETS,
)
from pda.errors import InvalidParameterError
from pda.params import PRESET_FIELDS, PredictParams, request_properties

#: request fields beside the explanation parameters
META: dict[str, dict[str, Any]] = {
    "model": {"type": "string", "maxLength": 200, "description": "a built-in name or a "
              "model file in PDA_MODEL_DIR (default: PDA_DEFAULT_MODEL, efficientnet_lite0)"},
    "callback_url": {
        "type": "string", "maxLength": 2000, "pattern": "^https?://",
        "description": "where to POST the job's event when it ends (explanation.finished, "
        ".failed or .canceled; see the callbacks of this operation), signed per Standard "
        "Webhooks; only to hosts the server allows (PDA_CALLBACK_ALLOWED_HOSTS), else 422. "
        "Not part of the explanation: an identical request with another callback_url gets "
        "the same job, which then calls both"},
    "preset": {"type": "string", "enum": list(PRESETS),
               "description": PRESET_HELP + f". The presets' fields ({', '.join(PRESET_FIELDS)}) "
               "have no schema default: leave them out and the preset sets them; a field "
               "you do send wins over the preset"},
}
IMAGE = {"type": "string", "format": "binary", "description": "PNG, JPEG, WebP, BMP, TIFF "
         "or GIF (one frame)"}
IMAGE_BASE64 = {"type": "string", "format": "byte", "minLength": 4,
                "description": "the image file (as for `image`), base64-encoded (standard "
                "alphabet, padded); a data: URL's base64 works too"}
#: a number in [0, 1] as the form's ``fill`` writes it (what float() of it accepts)
_UNIT = r"(?:0(?:\.[0-9]*)?|1(?:\.0*)?|\.[0-9]+)"
#: the form's ``fill``: three numbers in [0, 1], R,G,B
FILL_PATTERN = rf"^\s*{_UNIT}\s*,\s*{_UNIT}\s*,\s*{_UNIT}\s*$"
#: what a form field holding null says: unset (as leaving the field out); JSON's spelling,
#: which is how clients and fuzzers generated from the schema write a null in a form
FORM_NULL = "null"


def param_properties(*, form: bool) -> dict[str, dict[str, Any]]:
    """JSON-schema properties of the explanation parameters; in a form, ``fill`` is the
    text ``R,G,B``, and a nullable field's null is the text ``null`` (= unset)."""
    props = request_properties()
    if form:
        props["fill"] = {"anyOf": [{"type": "string", "pattern": FILL_PATTERN},
                                   {"type": "null"}],
                         "example": "0.5,0.5,0.5",
                         "description": props["fill"]["description"]}
        for name in nullable(props):
            props[name]["description"] += (". In a form, an empty value or `null` means "
                                           "unset")
    return props


def nullable(props: dict[str, dict[str, Any]]) -> list[str]:
    """The properties whose schema allows null."""
    return [name for name, prop in props.items()
            if {"type": "null"} in prop.get("anyOf", ()) or prop.get("type") == "null"]


#: form fields whose ``null`` means unset (:data:`FORM_NULL`)
NULLABLE_FORM_FIELDS = frozenset(nullable(param_properties(form=True)))


def parse_fill(text: str) -> list[float]:
    """The form's ``fill`` (:data:`FILL_PATTERN`) as three numbers, or a 422 that says
    what is allowed."""
    if not re.search(FILL_PATTERN, text):
        raise InvalidParameterError(
            f"fill {text[:40]!r}: send three numbers in [0, 1] as R,G,B, e.g. 0.5,0.5,0.5",
            field="fill")
    return [float(v) for v in text.split(",")]


#: an example request: the current defaults, spelled out
EXAMPLE_PARAMS = {"window": DEFAULT_WINDOW, "stride": DEFAULT_STRIDE,
                  "faithfulness": DEFAULT_FAITHFULNESS}


def _example_image() -> str:
    """A real image for the JSON examples (a 48 x 32 orange-to-blue gradient, PNG, in
    base64), so that "Try it out" and a client copying the example get the documented
    answer, not a 422 for a truncated placeholder."""
    from PIL import Image

    ramp = Image.linear_gradient("L").resize((48, 32))
    img = Image.merge("RGB", (ramp.point(lambda v: 255 - v // 2), Image.new("L", (48, 32), 120),
                              ramp))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


EXAMPLE_IMAGE = _example_image()


def explanation_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/explanations``."""
    params = {"type": "object", "additionalProperties": False,
              "properties": {**META, **param_properties(form=False)}}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"], "additionalProperties": False,
                "properties": {"image": IMAGE, **META, **param_properties(form=True)}}},
            "application/json": {
                "schema": {"type": "object", "required": ["image_base64"], "properties": {
                    "image_base64": IMAGE_BASE64, "callback_url": META["callback_url"],
                    "params": params}},
                "example": {"image_base64": EXAMPLE_IMAGE, "params": EXAMPLE_PARAMS}},
        },
    }


def prediction_fields() -> dict[str, dict[str, Any]]:
    """JSON-schema properties of :class:`pda.params.PredictParams`."""
    props = copy.deepcopy(PredictParams.model_json_schema()["properties"])
    for prop in props.values():
        prop.pop("title", None)
    props["model"] = META["model"]
    return props


def prediction_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/predictions``."""
    fields = prediction_fields()
    return {
        # required, as it is (422 without it). openapi-python-client 0.29.1 types a
        # required body with two content types `... | Unset = UNSET` without importing
        # Unset (its issue #1451), so a client generated from this document needs that
        # import added to create_prediction.py (docs/api.md; the client test does it)
        "required": True,
        "description": "the image, as a multipart file or base64 in JSON",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": IMAGE, **fields}}},
            "application/json": {
                "schema": {"type": "object", "required": ["image_base64"], "properties": {
                    "image_base64": IMAGE_BASE64, "model": META["model"],
                    "params": {"type": "object", "properties": fields}}},
                "example": {"image_base64": EXAMPLE_IMAGE, "params": {"top": 3}}},
        },
    }
