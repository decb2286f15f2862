"""Request bodies derived from the one parameter model, :class:`pda.params.ExplainParams`.

The multipart form and the JSON body of ``POST /v1/explanations`` accept the same
fields; their OpenAPI schemas are generated here from the model's JSON schema (and the
CLI's flags from the same model, in :mod:`pda.cli`), so they cannot drift apart.
"""

from __future__ import annotations

import copy
from typing import Any

from pda.defaults import (
    DEFAULT_FAITHFULNESS,
    DEFAULT_STRIDE,
    DEFAULT_WINDOW,
    PRESET_HELP,
    PRESETS,
)
from pda.params import PRESET_FIELDS, PredictParams, request_properties

#: request fields beside the explanation parameters
META: dict[str, dict[str, Any]] = {
    "model": {"type": "string", "description": "a built-in name or a model file in "
              "PDA_MODEL_DIR (default: PDA_DEFAULT_MODEL, efficientnet_lite0)"},
    "callback_url": {
        "type": "string", "format": "uri", "maxLength": 2000,
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


def param_properties(*, form: bool) -> dict[str, dict[str, Any]]:
    """JSON-schema properties of the explanation parameters; in a form, ``fill`` is the
    text ``R,G,B``."""
    props = request_properties()
    if form:
        props["fill"] = {"type": "string", "pattern": r"^[0-9.]+,[0-9.]+,[0-9.]+$",
                         "example": "0.5,0.5,0.5",
                         "description": props["fill"]["description"]}
    return props


#: an example request: the current defaults, spelled out
EXAMPLE_PARAMS = {"window": DEFAULT_WINDOW, "stride": DEFAULT_STRIDE,
                  "faithfulness": DEFAULT_FAITHFULNESS}


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
                    "callback_url": META["callback_url"],
                    "params": params}},
                "example": {"image_base64": "iVBORw0KGgo...", "params": EXAMPLE_PARAMS}},
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
        # the image is required (a request without one answers 422, declared), but the
        # body is declared optional: openapi-python-client (0.29) types every body with
        # two content types as `... | Unset = UNSET` yet imports Unset only when the
        # body is optional, so a required one makes its create_prediction module fail
        # to import (create_explanation imports it for its Idempotency-Key header)
        "required": False,
        "description": "the image, as a multipart file or base64 in JSON: required (422 "
                       "without it)",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": IMAGE, **fields}}},
            "application/json": {
                "schema": {"type": "object", "required": ["image_base64"], "properties": {
                    "image_base64": {"type": "string", "format": "byte"},
                    "model": META["model"],
                    "params": {"type": "object", "properties": fields}}},
                "example": {"image_base64": "iVBORw0KGgo...", "params": {"top": 3}}},
        },
    }
