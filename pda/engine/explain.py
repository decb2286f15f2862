"""One explanation, end to end: parameters, targets, layer readouts, sweep, document.

This is the adapter the CLI and the RQ job call. It turns a model and a preprocessed
image into the contract's result document; the numerics live in :mod:`.engine`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import InvalidParameterError, UnknownLayerError
from .device import auto_batch_size, check_precision, prefers_channels_last
from .drilldown import check_drilldown, coarse_stride_for, explain_drilldown, plan_drilldown
from .geometry import check_window, count_windows, window_positions
from .samplers import SAMPLERS, make_sampler
from .stats import SamplerStats
from .sweep import DEFAULT_TRAIN_SIZE, Progress, count_passes, relevance_maps, run_sweep

#: defaults sized so one job finishes in about a minute on a 2-core CPU (docs/performance.md)
DEFAULT_WINDOW = 16
DEFAULT_STRIDE = 8
DEFAULT_SAMPLES = 4
DEFAULT_PADDING = 2
#: the paper's settings (Zintgraf et al. 2017, section 4): ``preset="paper"``
PAPER = {"window": 10, "padding": 2, "samples": 10, "stride": 1}
PREDICTION_TOP = 5


class ExplainParams(BaseModel):
    """Parameters of one explanation (the CLI flags and the API's form fields)."""

    model_config = ConfigDict(extra="forbid")

    sampler: Literal["conditional", "marginal", "constant"] = "conditional"
    window: int = Field(DEFAULT_WINDOW, ge=1, le=512, description="window side k in pixels")
    padding: int = Field(DEFAULT_PADDING, ge=0, le=32, description="conditional ring width")
    samples: int = Field(DEFAULT_SAMPLES, ge=1, le=1000, description="samples S per window")
    stride: int = Field(DEFAULT_STRIDE, ge=1, le=512, description="window step in pixels")
    fill: tuple[float, float, float] | None = Field(
        None, description="constant sampler colour in [0, 1]; default: reference mean"
    )
    target: str = Field("top3", description="topK, or comma-separated class/channel indices")
    layer: str = Field("output", description="output, logits, or a module name")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    train_size: int = Field(
        DEFAULT_TRAIN_SIZE, ge=1, le=10**9,
        description="Laplace correction N (training-set size)",
    )
    drilldown: float | None = Field(
        None, ge=0.0, le=1.0, description="approximate (opt-in): sweep a coarse grid, then "
        "the fine stride only in this top fraction of cells by |relevance|; 1 = exact",
    )
    coarse_stride: int | None = Field(
        None, ge=1, le=512, description="drill-down's coarse stride, a multiple of stride "
        "(default 4 x stride)",
    )

    @model_validator(mode="after")
    def _drilldown_geometry(self) -> ExplainParams:
        if self.drilldown is not None:
            check_drilldown(self.stride, coarse_stride_for(self.stride, self.coarse_stride),
                            self.drilldown)
        return self

    @field_validator("fill")
    @classmethod
    def _fill_in_range(cls, v: tuple[float, float, float] | None):
        if v is not None and not all(0.0 <= c <= 1.0 for c in v):
            raise ValueError("fill values must lie in [0, 1]")
        return v

    @field_validator("target")
    @classmethod
    def _target_syntax(cls, v: str) -> str:
        parse_target(v)
        return v.strip().lower()

    @field_validator("layer")
    @classmethod
    def _layer_syntax(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.]{1,200}", v):
            raise ValueError("layer must be output, logits or a module name like blocks.3")
        return v


def with_preset(values: dict[str, Any], preset: str | None) -> dict[str, Any]:
    """Fill in the paper's settings under ``preset="paper"``; explicit values win."""
    if preset in (None, "", "default"):
        return values
    if preset != "paper":
        raise InvalidParameterError(f"unknown preset {preset!r}; use paper", field="preset")
    return {**PAPER, **values}


def parse_target(spec: str) -> tuple[str, int | list[int]]:
    """``top3`` -> ("top", 3); ``281,285`` -> ("indices", [281, 285])."""
    s = spec.strip().lower()
    if m := re.fullmatch(r"top(\d+)", s):
        k = int(m.group(1))
        if not 1 <= k <= 20:
            raise InvalidParameterError(f"target {spec!r}: topK needs 1 <= K <= 20", field="target")
        return "top", k
    if re.fullmatch(r"\d+(\s*,\s*\d+)*", s):
        idx = [int(t) for t in s.split(",")]
        if len(idx) > 20:
            raise InvalidParameterError("at most 20 target indices", field="target")
        if len(set(idx)) != len(idx):
            raise InvalidParameterError(f"target {spec!r} repeats an index", field="target")
        return "indices", idx
    raise InvalidParameterError(
        f"target {spec!r} is neither topK (e.g. top3) nor indices (e.g. 281,285)", field="target"
    )


class _Stop(Exception):
    """Raised in a forward hook once the hidden activation is captured."""


def _hidden_readout(model: Any, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Mean activation of every channel of ``layer``: (B, C, H, W) -> (B, channels)."""
    module = model.get_layer(layer)
    captured: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        captured["out"] = out[0] if isinstance(out, tuple) else out
        raise _Stop

    def read(batch: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(hook)
        try:
            model(batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        out = captured.pop("out", None)
        if out is None:
            raise UnknownLayerError(f"layer {layer!r} is not used in the forward pass")
        # Fig. 5/6 of the paper: a feature map's units averaged over space
        return out.float().flatten(2).mean(2) if out.dim() > 2 else out.float()  # (B, ch)

    return read


@dataclass
class Explanation:
    prediction: list[dict[str, Any]]
    targets: list[int]
    labels: list[str]
    unit: str
    relevance: np.ndarray  # (T, H, W) float32
    counts: np.ndarray  # (H, W) int32 windows covering each pixel
    forward_passes: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def predict(model: Any, x: torch.Tensor, top: int = PREDICTION_TOP) -> list[dict[str, Any]]:
    """Top-k classes of the unmodified image ``x`` (C, H, W)."""
    probs = torch.softmax(model(x[None]).float(), dim=1)[0]
    p, idx = probs.topk(min(top, probs.numel()))
    return [
        {"class_index": int(i), "label": _label(model, int(i)), "probability": float(q)}
        for q, i in zip(p.tolist(), idx.tolist(), strict=True)
    ]


def _label(model: Any, index: int) -> str:
    labels = getattr(model, "labels", None) or []
    return labels[index] if index < len(labels) else str(index)


def plan(model: Any, params: ExplainParams) -> dict[str, int]:
    """Windows and forward passes a job needs, without running it (for caps and ETAs)."""
    H, W = model.input_size
    check_window(H, W, params.window, params.stride)
    n_w = count_windows(H, W, params.window, params.stride)
    per = 1 if params.sampler == "constant" else params.samples
    if params.drilldown is not None:  # an upper bound: refinement depends on the coarse map
        return {"windows": n_w, "forward_passes": plan_drilldown(
            H, W, params.window, params.stride,
            coarse_stride_for(params.stride, params.coarse_stride),
            params.drilldown, per)}
    return {"windows": n_w, "forward_passes": n_w * per + 1}


def explain(
    model: Any,
    x: torch.Tensor,
    params: ExplainParams,
    stats: SamplerStats,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    on_prediction: Callable[[list[dict[str, Any]]], None] | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> Explanation:
    """Explain ``model``'s decision on pixel-space image ``x`` (C, H, W) in [0, 1].

    ``batch_size`` None picks one for the model's device (:func:`.device.auto_batch_size`);
    ``precision`` bf16/fp16 runs the sweep's forward passes under autocast (the reported
    prediction stays fp32). ``compile`` runs output/logits sweeps through
    ``torch.compile`` at one fixed batch shape (:meth:`.models.LoadedModel.compiled`);
    hidden-layer sweeps stay eager (their forward hooks would break the graph).
    """
    start = time.perf_counter()
    if params.sampler not in SAMPLERS:  # pydantic guards this too; keeps direct callers honest
        raise InvalidParameterError(f"unknown sampler {params.sampler!r}", field="sampler")
    C, H, W = x.shape
    check_window(H, W, params.window, params.stride)
    check_precision(precision, model.device)  # fail before any forward pass
    x = x.to(model.device)
    prediction = predict(model, x)
    if on_prediction is not None:
        on_prediction(prediction)
    kind, spec = parse_target(params.target)
    if batch_size is None:
        batch_size = auto_batch_size(x.device, (H, W), model)
    compile = compile and params.layer in ("output", "logits")
    net = model.compiled(batch_size, prefers_channels_last(x.device)) if compile else model

    if params.layer in ("output", "logits"):
        num_classes = model.num_classes
        if kind == "top":
            targets = [p["class_index"] for p in prediction[:spec]]
            if len(targets) < spec:
                targets = torch.softmax(model(x[None]).float(), 1)[0].topk(spec).indices.tolist()
        else:
            targets = list(spec)
            bad = [t for t in targets if t >= num_classes]
            if bad:
                raise InvalidParameterError(
                    f"target class {bad[0]} does not exist: the model has {num_classes} "
                    f"classes (0..{num_classes - 1})", field="target",
                )
        labels = [_label(model, t) for t in targets]
        idx = torch.tensor(targets, device=model.device)
        if params.layer == "output":
            def readout(b: torch.Tensor) -> torch.Tensor:
                return torch.softmax(net(b).float(), dim=1)[:, idx]  # (B, T)
        else:
            def readout(b: torch.Tensor) -> torch.Tensor:
                return net(b).float()[:, idx]  # (B, T)
        unit, log_odds = ("bits", True) if params.layer == "output" else ("activation", False)
    else:
        hidden = _hidden_readout(model, params.layer)
        acts = hidden(x[None])[0]  # (channels,)
        n_ch = acts.numel()
        if kind == "top":
            targets = acts.topk(min(spec, n_ch)).indices.tolist()
        else:
            targets = list(spec)
            if max(targets) >= n_ch:
                raise InvalidParameterError(
                    f"channel {max(targets)} does not exist: layer {params.layer!r} has "
                    f"{n_ch} channels (0..{n_ch - 1})", field="target",
                )
        labels = [f"{params.layer}[{t}]" for t in targets]
        idx = torch.tensor(targets, device=model.device)

        def readout(b: torch.Tensor) -> torch.Tensor:
            return hidden(b)[:, idx]  # (B, T)

        unit, log_odds, num_classes = "activation", False, None

    positions = window_positions(H, W, params.window, params.stride, device=x.device)
    sampler = make_sampler(
        params.sampler, x, params.window, positions, stats,
        padding=params.padding, fill=params.fill,
    )
    extra: dict[str, Any] = {}
    if params.drilldown is not None:
        rel, counts, passes, extra["approximation"] = explain_drilldown(
            readout, x, sampler, params, log_odds=log_odds, num_classes=num_classes,
            batch_size=batch_size, progress=progress, precision=precision,
            fixed_batch=compile)
    else:
        sweep = run_sweep(
            readout, x, sampler, window=params.window, stride=params.stride,
            samples=params.samples, batch_size=batch_size, seed=params.seed, progress=progress,
            precision=precision, fixed_batch=compile,
        )
        rel, counts = relevance_maps(
            sweep, H, W, params.window, params.stride, log_odds=log_odds,
            train_size=params.train_size, num_classes=num_classes,
        )
        passes = sweep.forward_passes + 1
    return Explanation(
        prediction=prediction,
        targets=targets,
        labels=labels,
        unit=unit,
        relevance=rel.float().cpu().numpy(),
        counts=counts.round().to(torch.int32).cpu().numpy(),
        forward_passes=passes,
        seconds=time.perf_counter() - start,
        extra={"planned_passes": count_passes(len(positions), sampler, params.samples),
               **extra},
    )


def result_document(
    expl: Explanation,
    *,
    model_name: str,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    crop_box: tuple[int, int, int, int],
    params: ExplainParams,
    num_classes: int | None = None,
    include_relevance: bool = True,
) -> dict[str, Any]:
    """The contract's result document (``result.json`` and the relevance endpoint)."""
    uncovered = int((expl.counts == 0).sum())
    p = params.model_dump()
    p["fill"] = list(p["fill"]) if p["fill"] is not None else None
    p["laplace"] = {"train_size": params.train_size, "num_classes": num_classes}
    return {
        "model": {"name": model_name, "input_size": list(input_size)},
        "image": {"width": image_size[0], "height": image_size[1], "crop_box": list(crop_box)},
        "params": p,
        "prediction": expl.prediction,
        "explanations": [
            {
                "target": t,
                "label": lab,
                "unit": expl.unit,
                "max_abs": float(np.abs(expl.relevance[i]).max()),
                **({"relevance": np.round(expl.relevance[i], 6).tolist()}
                   if include_relevance else {}),
            }
            for i, (t, lab) in enumerate(zip(expl.targets, expl.labels, strict=True))
        ],
        "coverage": {
            "uncovered_pixels": uncovered,
            "covered_fraction": 1.0 - uncovered / expl.counts.size,
        },
        "stats": {"forward_passes": expl.forward_passes, "seconds": round(expl.seconds, 3)},
        **({"approximation": expl.extra["approximation"]}
           if "approximation" in expl.extra else {}),
    }
