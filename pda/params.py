"""The parameters of one explanation: one model from which the CLI flags, the HTTP form,
the JSON body and the OpenAPI schema are all derived, plus presets, targets and the one
function that counts forward passes.

No torch here: the API validates with this module alone.
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .defaults import (
    DEFAULT_FAITHFULNESS,
    DEFAULT_FIT,
    DEFAULT_LAYER,
    DEFAULT_PADDING,
    DEFAULT_SAMPLER,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    DEFAULT_STRIDE,
    DEFAULT_TARGET,
    DEFAULT_TRAIN_SIZE,
    DEFAULT_WINDOW,
    DETERMINISTIC_SAMPLERS,
    FITS,
    INCREMENTAL_MODES,
    MAX_TARGETS,
    OUTPUT_LAYERS,
    PREDICTION_TOP,
    PRESETS,
    SAMPLERS,
)
from .errors import InvalidParameterError, UnknownLayerError
from .grid import (
    check_drilldown,
    coarse_stride_for,
    count_windows,
    passes_needed,
    passes_per_window,
    plan_drilldown,
)

#: a colour channel in pixel space (the schema says the bounds, so a client knows them)
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


def _top_pattern(most: int) -> str:
    """``topK`` for 1 <= K <= ``most``, K written with at most 3 digits (leading zeros
    allowed), as :func:`parse_target` reads it."""
    ks = sorted({f"{k:0{width}d}" for k in range(1, most + 1) for width in (1, 2, 3)
                 if len(f"{k:0{width}d}") <= 3}, key=lambda s: (-len(s), s))
    return "[Tt][Oo][Pp](?:" + "|".join(ks) + ")"


#: what :func:`parse_target` accepts, as the schema's pattern (so a generated client, and
#: a fuzzer, know it): topK, or up to MAX_TARGETS indices; surrounding blanks are ignored
TARGET_PATTERN = (rf"^\s*(?:{_top_pattern(MAX_TARGETS)}|[0-9]{{1,9}}(?:\s*,\s*[0-9]{{1,9}})"
                  rf"{{0,{MAX_TARGETS - 1}}})\s*$")
#: a layer: output, logits or a module name such as _blocks.3
LAYER_PATTERN = r"^[A-Za-z0-9_.]{1,200}$"


class ExplainParams(BaseModel):
    """Parameters of one explanation (the CLI flags and the API's form fields)."""

    model_config = ConfigDict(extra="forbid")

    sampler: Literal[SAMPLERS] = Field(
        DEFAULT_SAMPLER, description="what replaces a window: conditional (the paper's), "
        "marginal or constant")
    window: int = Field(DEFAULT_WINDOW, ge=1, le=512, description="window side k in pixels")
    padding: int = Field(DEFAULT_PADDING, ge=0, le=32, description="conditional ring width")
    samples: int = Field(DEFAULT_SAMPLES, ge=1, le=1000, description="samples S per window "
                         "(the constant sampler draws one: it is deterministic)")
    stride: int = Field(DEFAULT_STRIDE, ge=1, le=512, description="window step in pixels")
    fill: tuple[Unit, Unit, Unit] | None = Field(
        None, description="constant sampler colour R,G,B in [0, 1]; default: reference mean"
    )
    target: str = Field(DEFAULT_TARGET, description="topK, or comma-separated class/channel "
                        f"indices (at most {MAX_TARGETS}, none repeated)",
                        json_schema_extra={"pattern": TARGET_PATTERN})
    layer: str = Field(DEFAULT_LAYER, description="output, logits, or a module name "
                       "(`pda models NAME` lists them)",
                       json_schema_extra={"pattern": LAYER_PATTERN})
    seed: int = Field(DEFAULT_SEED, ge=0, le=2**31 - 1, description="random seed")
    train_size: int = Field(
        DEFAULT_TRAIN_SIZE, ge=1, le=10**9,
        description="Laplace correction N (training-set size)",
    )
    fit: Literal[FITS] = Field(
        DEFAULT_FIT, description="how the photo fits the model input: crop (centre crop), pad "
        "(whole photo, letterboxed) or squash (whole photo, stretched)")
    faithfulness: bool = Field(
        DEFAULT_FAITHFULNESS, description="score each map by deletion/insertion AUC against "
        "random block orders (docs/faithfulness.md); costs about 100 forward passes per "
        "target and per random order; output and logits layers only")
    drilldown: float | None = Field(
        None, ge=0.0, le=1.0, description="approximate (opt-in): sweep a coarse grid, then "
        "the fine stride only in this top fraction of cells by |relevance|; the result "
        "reports its estimated error; 1 = exact",
    )
    coarse_stride: int | None = Field(
        None, ge=1, le=512, description="drill-down's coarse stride, a multiple of stride "
        "(default 4 x stride)",
    )
    incremental: Literal[INCREMENTAL_MODES] = Field(
        "auto", description="exact incremental inference (same map, less compute): on, off, "
        "or auto = the deployment's PDA_INCREMENTAL, which by default uses it where "
        "`python -m pda.tools.bench_incremental` measured it faster for the model and device",
    )

    @field_validator("target")
    @classmethod
    def _target_syntax(cls, v: str) -> str:
        parse_target(v)
        return v.strip().lower()

    @field_validator("layer")
    @classmethod
    def _layer_syntax(cls, v: str) -> str:
        if not re.fullmatch(LAYER_PATTERN, v):
            raise ValueError("layer must be output, logits or a module name like _blocks.3")
        return v

    @model_validator(mode="after")
    def _drilldown_geometry(self) -> ExplainParams:
        if self.drilldown is not None:
            check_drilldown(self.stride, coarse_stride_for(self.stride, self.coarse_stride),
                            self.drilldown)
        return self

    @model_validator(mode="after")
    def _one_sample_when_deterministic(self) -> ExplainParams:
        # the constant sampler's samples are all the same: the sweep makes one pass per
        # window, so the record says so (and identical jobs deduplicate)
        if self.sampler in DETERMINISTIC_SAMPLERS and self.samples != 1:
            self.samples = 1
        return self

    @property
    def hidden(self) -> bool:
        """True when ``layer`` names a module (targets are its channels)."""
        return self.layer not in OUTPUT_LAYERS


#: the fields a preset sets (window, padding, samples, stride)
PRESET_FIELDS = tuple(sorted({name for values in PRESETS.values() for name in values}))


def with_preset(values: dict[str, Any], preset: str | None) -> dict[str, Any]:
    """Fill in a preset's settings (``paper``); explicit values win.

    "Explicit" means sent: the API schema gives the preset's fields no default
    (:func:`request_properties`), so a client generated from it sends them only when its
    caller sets them, and a value a caller sets on purpose is honoured as documented."""
    if preset in (None, ""):
        return values
    if not isinstance(preset, str) or preset not in PRESETS:
        raise InvalidParameterError(
            f"unknown preset {str(preset)[:40]!r}; use {', '.join(PRESETS)}", field="preset")
    return {**PRESETS[preset], **values}


def request_properties() -> dict[str, dict[str, Any]]:
    """JSON-schema properties of the request fields, derived from :class:`ExplainParams`.

    A field a preset sets carries no ``default`` (its description says what absent means:
    the preset's value, else the service default), and neither does a field whose default
    is null: client generators send every schema default explicitly, and an explicit
    ``window=32`` from a generated client would otherwise override ``preset=paper``."""
    props = copy.deepcopy(ExplainParams.model_json_schema()["properties"])
    for name, prop in props.items():
        prop.pop("title", None)
        if name in PRESET_FIELDS:
            default = prop.pop("default")
            by_preset = ", ".join(f"{p}: {v[name]}" for p, v in PRESETS.items() if name in v)
            prop["description"] += (f". Absent: the preset's value ({by_preset}), else "
                                    f"{default}; sent, it wins over the preset")
        elif "default" in prop and prop["default"] is None:
            del prop["default"]
    return props


class PredictParams(BaseModel):
    """The fields of ``POST /v1/predictions`` beside the image."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=200, description="a built-in name or a model "
                              "file in PDA_MODEL_DIR (default: PDA_DEFAULT_MODEL)")
    top: int = Field(PREDICTION_TOP, ge=1, le=MAX_TARGETS, description="classes to return")
    fit: Literal[FITS] = Field(
        DEFAULT_FIT, description="how the photo fits the model input (as for explanations)")


def parse_target(spec: str) -> tuple[str, int | list[int]]:
    """``top3`` -> ("top", 3); ``281,285`` -> ("indices", [281, 285])."""
    s = spec.strip().lower()
    if m := re.fullmatch(r"top([0-9]{1,3})", s):
        k = int(m.group(1))
        if not 1 <= k <= MAX_TARGETS:
            raise InvalidParameterError(
                f"target {spec!r}: topK needs 1 <= K <= {MAX_TARGETS}", field="target")
        return "top", k
    if re.fullmatch(r"[0-9]{1,9}(\s*,\s*[0-9]{1,9})*", s):
        idx = [int(t) for t in s.split(",")]
        if len(idx) > MAX_TARGETS:
            raise InvalidParameterError(f"at most {MAX_TARGETS} target indices", field="target")
        if len(set(idx)) != len(idx):
            raise InvalidParameterError(f"target {spec!r} repeats an index", field="target")
        return "indices", idx
    raise InvalidParameterError(
        f"target {spec!r} is neither topK (e.g. top3) nor indices (e.g. 281,285)", field="target"
    )


def plan(params: ExplainParams, input_size: tuple[int, int]) -> dict[str, int]:
    """Windows and forward passes a job needs: the sweep, the unmodified image's pass and
    the faithfulness scores. ``forward_passes`` is the one count that caps, ETAs, progress
    (its total, fixed at submit) and the result document all use; the worker counts the
    same passes (``faithfulness_passes`` is :func:`faithfulness_passes`)."""
    H, W = input_size
    if params.window > H or params.window > W:
        raise InvalidParameterError(
            f"window {params.window} exceeds the image size {H}x{W} (the model's input)",
            field="window")
    n_w = count_windows(H, W, params.window, params.stride)
    per = passes_per_window(params.sampler, params.samples)
    if params.drilldown is not None:  # an upper bound: refinement depends on the coarse map
        sweep = plan_drilldown(H, W, params.window, params.stride,
                               coarse_stride_for(params.stride, params.coarse_stride),
                               params.drilldown, per)
    else:
        sweep = n_w * per + 1
    scores = faithfulness_passes(params, input_size, target_count(params))
    return {"windows": n_w, "sweep_passes": sweep, "faithfulness_passes": scores,
            "forward_passes": sweep + scores}


def target_count(params: ExplainParams) -> int:
    """Targets a job explains: K of topK (a model has at least K classes, or the job
    fails), or the listed indices."""
    kind, spec = parse_target(params.target)
    return spec if isinstance(spec, int) else len(spec)


def faithfulness_passes(params: ExplainParams, input_size: tuple[int, int],
                        targets: int) -> int:
    """Forward passes of the faithfulness scores of ``targets`` maps: 0 when off or for a
    hidden layer (a channel has no class probability to delete)."""
    if not (params.faithfulness and params.layer in OUTPUT_LAYERS):
        return 0
    H, W = input_size
    return passes_needed(H * W, targets)


def check_against_model(params: ExplainParams, info: dict[str, Any]) -> None:
    """Check what the model's metadata can tell before any work: the window fits its input,
    the layer exists, and the targets are classes or channels it has. Facts the metadata
    does not know (None) are left to the worker."""
    name = info["name"]
    if info.get("input_size"):
        plan(params, tuple(info["input_size"]))
    kind, spec = parse_target(params.target)
    if params.hidden:
        layers = info.get("layers")
        if layers is None:
            return  # a model file no worker has described yet
        layer = next((x for x in layers if x["name"] == params.layer), None)
        if layer is None:
            few = ", ".join(x["name"] for x in layers[:4]) + (", ..." if len(layers) > 4 else "")
            hint = f"it has {len(layers)} layers, e.g. {few}" if layers else "it has none"
            raise UnknownLayerError(
                f"model {name!r} has no layer {params.layer!r}; {hint} "
                f"(`pda models {name}` or GET /v1/models/{name} lists them)")
        bound, what = layer["channels"], f"layer {params.layer!r} has {layer['channels']} channels"
    else:
        bound, what = info.get("num_classes"), f"{name} has {info.get('num_classes')} classes"
    if bound is None:
        return
    bad = [t for t in spec if t >= bound] if kind == "indices" else []
    if bad:
        noun = "channel" if params.hidden else "class"
        raise InvalidParameterError(
            f"target {noun} {bad[0]} does not exist: {what} (0..{bound - 1})", field="target")
