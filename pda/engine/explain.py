"""One explanation, end to end: parameters, targets, layer readouts, sweep, document.

This is the adapter the CLI and the RQ job call. It turns a model and a preprocessed
image into the contract's result document; the numerics live in :mod:`.engine`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..defaults import OUTPUT_LAYERS, PREDICTION_TOP, SAMPLERS
from ..document import coverage
from ..errors import InvalidParameterError, UnknownLayerError
from ..params import ExplainParams, parse_target
from .device import auto_batch_size, check_precision, prefers_channels_last
from .drilldown import explain_drilldown
from .faithfulness import passes_needed, score_explanation
from .geometry import check_window, window_positions
from .samplers import make_sampler
from .stats import SamplerStats
from .sweep import Progress, relevance_maps, run_sweep


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
    approximation: dict[str, Any] | None = None  # the drill-down's cost and error
    faithfulness: list[dict[str, Any]] | None = None  # per target (docs/faithfulness.md)
    faithfulness_passes: int = 0  # included in forward_passes


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

    # the scores' passes join the job's progress total; they run after the sweep
    scoring = params.faithfulness and params.layer in OUTPUT_LAYERS  # class probabilities
    extra = passes_needed(H * W, len(targets)) if scoring else 0
    last_total = [0]
    if progress is not None and extra:
        report = progress

        def progress(done: int, total: int) -> None:
            last_total[0] = total
            report(done, total + extra)

    positions = window_positions(H, W, params.window, params.stride, device=x.device)
    sampler = make_sampler(
        params.sampler, x, params.window, positions, stats,
        padding=params.padding, fill=params.fill,
    )
    approximation = None
    if params.drilldown is not None:
        rel, counts, passes, approximation = explain_drilldown(
            readout, x, sampler, params, log_odds=log_odds, num_classes=num_classes,
            batch_size=batch_size, progress=progress, precision=precision,
            fixed_batch=compile)
    else:
        sweep = run_sweep(
            readout, x, sampler, window=params.window, stride=params.stride,
            samples=params.samples, batch_size=batch_size, seed=params.seed,
            progress=progress, precision=precision, fixed_batch=compile,
        )
        rel, counts = relevance_maps(
            sweep, H, W, params.window, params.stride, log_odds=log_odds,
            train_size=params.train_size, num_classes=num_classes,
        )
        passes = sweep.forward_passes + 1
    scores = None
    if scoring:
        scores, used = score_explanation(
            model, x, rel, targets, seed=params.seed, batch_size=batch_size,
            progress=None if progress is None else
            lambda d, t: report(last_total[0] + d, last_total[0] + t))
        assert used == extra
    return Explanation(
        prediction=prediction,
        targets=targets,
        labels=labels,
        unit=unit,
        relevance=rel.float().cpu().numpy(),
        counts=counts.round().to(torch.int32).cpu().numpy(),
        forward_passes=passes + extra,
        seconds=time.perf_counter() - start,
        approximation=approximation,
        faithfulness=scores,
        faithfulness_passes=extra,
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
) -> dict[str, Any]:
    """The contract's result document without its grids (:mod:`pda.document` adds them:
    ``result.json`` and the relevance endpoint)."""
    p = params.model_dump()
    p["fill"] = list(p["fill"]) if p["fill"] is not None else None
    p["laplace"] = {"train_size": params.train_size, "num_classes": num_classes}
    return {
        "model": {"name": model_name, "input_size": list(input_size)},
        "image": {"width": image_size[0], "height": image_size[1], "crop_box": list(crop_box)},
        "params": p,
        "prediction": expl.prediction,
        "explanations": [
            {"target": t, "label": lab, "unit": expl.unit,
             "max_abs": float(np.abs(expl.relevance[i]).max()),
             **({"faithfulness": expl.faithfulness[i]} if expl.faithfulness else {})}
            for i, (t, lab) in enumerate(zip(expl.targets, expl.labels, strict=True))
        ],
        "coverage": coverage(expl.counts, params.window, params.stride),
        "stats": {"forward_passes": expl.forward_passes, "seconds": round(expl.seconds, 3),
                  "faithfulness_passes": expl.faithfulness_passes},
        **({"approximation": expl.approximation} if expl.approximation else {}),
    }
