"""Request bodies derived from the one parameter model, :class:`pda.params.ExplainParams`.

The multipart form and the JSON body of ``POST /v1/explanations`` accept the same
fields; their OpenAPI schemas are generated here from the model's JSON schema (and the
CLI's flags from the same model, in :mod:`pda.cli`), so they cannot drift apart.
"""

from __future__ import annotations

import copy
from typing import Any

from pda.defaults import DEFAULT_FIT, FITS, MAX_TARGETS, PREDICTION_TOP, PRESETS
from pda.params import ExplainParams

#: request fields beside the explanation parameters
META: dict[str, dict[str, Any]] = {
    "model": {"type": "string", "description": "a built-in name or a model file in "
              "PDA_MODEL_DIR (default: PDA_DEFAULT_MODEL, efficientnet_lite0)"},
    "preset": {"type": "string", "enum": list(PRESETS),
               "description": "paper = window 10, padding 2, samples 10, stride 1 (explicit "
               "fields win)"},
}
IMAGE = {"type": "string", "format": "binary", "description": "PNG, JPEG, WebP, BMP, TIFF "
         "or GIF (one frame)"}


def param_properties(*, form: bool) -> dict[str, dict[str, Any]]:
    """JSON-schema properties of the explanation parameters; in a form, ``fill`` is the
    text ``R,G,B``."""
    props = copy.deepcopy(ExplainParams.model_json_schema()["properties"])
    for prop in props.values():
        prop.pop("title", None)
    if form:
        props["fill"] = {"type": "string", "pattern": r"^[0-9.]+,[0-9.]+,[0-9.]+$",
                         "example": "0.5,0.5,0.5",
                         "description": props["fill"]["description"]}
    return props


def explanation_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/explanations``."""
    params = {"type": "object", "additionalProperties": False,
              "properties": {**META, **param_properties(form=False)}}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": IMAGE, **META, **param_properties(form=True)}}},
            "application/json": {
                "schema": {"type": "object", "required": ["image_base64"], "properties": {
                    "image_base64": {"type": "string", "format": "byte"},
                    "params": params}},
                "example": {"image_base64": "iVBORw0KGgo...",
                            "params": {"window": 16, "stride": 8}}},
        },
    }


PREDICTION_FIELDS = {
    "model": META["model"],
    "top": {"type": "integer", "minimum": 1, "maximum": MAX_TARGETS, "default": PREDICTION_TOP},
    "fit": {"type": "string", "enum": list(FITS), "default": DEFAULT_FIT},
}


def prediction_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/predictions``."""
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": IMAGE, **PREDICTION_FIELDS}}},
            "application/json": {
                "schema": {"type": "object", "required": ["image_base64"], "properties": {
                    "image_base64": {"type": "string", "format": "byte"},
                    "params": {"type": "object", "properties": PREDICTION_FIELDS}}},
                "example": {"image_base64": "iVBORw0KGgo...", "params": {"top": 3}}},
        },
    }
