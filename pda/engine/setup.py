"""A run's set-up: everything fixed before its first window pass (:func:`prepare`).

It predicts, fixes the targets, resolves the runtime's backend once for the model's
device, builds the readout, the sampler and (where measured faster) the incremental
window readout. The same set-up serves a one-process run and every chunk of a split job
(:class:`pda.engine.explain.Run` builds it). Each step is announced through ``step``
before it starts, so a caller sees the preparation advance (the job resource's
``preparing`` phase) and can stop it between steps (a cancel, a shutdown).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..defaults import OUTPUT_LAYERS, PREDICTION_TOP, SAMPLERS
from ..errors import InvalidParameterError
from ..grid import check_window
from ..params import ExplainParams, parse_target
from ..runtime import Runtime
from .backends import (
    BackendReadout,
    net_for,
    precision_error,
    resolve_backend,
    resolve_precision,
)
from .device import auto_batch_size, check_precision
from .geometry import window_positions
from .incremental import IncrementalUnsupportedError, window_readout
from .incremental.decisions import use_incremental
from .samplers import make_sampler
from .stats import SamplerStats
from .sweep import Forward, WindowReadout

log = logging.getLogger("pda.engine")

#: the preparation's steps, in order (announced through ``prepare``'s ``step``)
STEPS = ("predict", "backend", "sampler", "incremental")
Step = Callable[[str], None]


def predict(model: Any, x: torch.Tensor, top: int = PREDICTION_TOP) -> list[dict[str, Any]]:
    """Top-k classes of the unmodified image ``x`` (C, H, W)."""
    probs = torch.softmax(model(x[None]).float(), dim=1)[0]
    p, idx = probs.topk(min(top, probs.numel()))
    return [
        {"class_index": int(i), "label": label(model, int(i)), "probability": float(q)}
        for q, i in zip(p.tolist(), idx.tolist(), strict=True)
    ]


def label(model: Any, index: int) -> str:
    labels = getattr(model, "labels", None) or []
    return labels[index] if index < len(labels) else str(index)


@dataclass
class Setup:
    """Everything a sweep of one job needs, fixed before its first window pass."""

    x: torch.Tensor  # (C, H, W) on the model's device
    params: ExplainParams
    prediction: list[dict[str, Any]]
    targets: list[int]
    labels: list[str]
    unit: str
    log_odds: bool
    num_classes: int | None
    forward: Forward  # how the sweep's forward passes run (readout, batch, precision, ...)
    sampler: Any
    started: float
    runtime: dict[str, Any]  # what ran, for the result document
    torch_threads: int | None = None  # torch's threads while the backend runs
    score_backend: str = "torch"  # what runs the faithfulness scores (concrete, never auto)
    #: the caller's runtime choices, with the batch size fixed (the scores' net uses them)
    choices: Runtime = Runtime()

    @property
    def batch_size(self) -> int:
        return self.forward.batch_size


def prepare(
    model: Any,
    x: torch.Tensor,
    params: ExplainParams,
    stats: SamplerStats,
    runtime: Runtime,
    *,
    targets: list[int] | None = None,
    on_prediction: Callable[[list[dict[str, Any]]], None] | None = None,
    step: Step | None = None,
) -> Setup:
    """Check the parameters, predict, fix the targets (``targets`` given: those, as the
    planning run of a split job chose them) and build the readout and the sampler.

    ``runtime`` (the CLI's, the library's or the worker's, built once from the settings)
    says how: its backend runs the readout (``auto`` is resolved here, once, for the
    model's device), its precision the forward passes, its cache dir keeps converted graphs
    across restarts. Where exact incremental inference (torch) was measured faster than
    that backend's naive sweep, the windows go through it instead; ``runtime.incremental``
    (``PDA_INCREMENTAL``) stands in for a request's ``incremental="auto"``. The model is
    already on its device: ``runtime.device`` chose it when it was loaded."""
    started = time.perf_counter()
    announce = step or (lambda _name: None)
    if params.sampler not in SAMPLERS:  # pydantic guards this too; keeps direct callers honest
        raise InvalidParameterError(f"unknown sampler {params.sampler!r}", field="sampler")
    C, H, W = x.shape
    check_window(H, W, params.window, params.stride)
    if runtime.precision != "auto":
        check_precision(runtime.precision, model.device)  # fail before any forward pass
    announce("predict")
    x = x.to(model.device)
    prediction = predict(model, x)
    if on_prediction is not None:
        on_prediction(prediction)
    announce("backend")
    runtime = runtime.replace(batch_size=runtime.batch_size or auto_batch_size(
        x.device, (H, W), model))
    auto = runtime.backend == "auto"
    backend = resolve_backend(runtime.backend, model.device, runtime.precision)  # once
    # auto: bf16 where this backend runs it natively and its measured error allows
    runtime = runtime.replace(precision=resolve_precision(runtime.precision, model.device,
                                                          backend))
    mode = runtime.incremental if params.incremental == "auto" else params.incremental
    incremental = params.drilldown is None and runtime.precision == "fp32" and use_incremental(
        mode, model.name, x.device.type, backend)
    net, note = _net(model, params.layer, runtime.replace(
        backend="torch" if incremental else backend), auto)
    if params.layer in OUTPUT_LAYERS:
        targets = targets or _class_targets(model, x, params, prediction)
        labels = [label(model, t) for t in targets]
        num_classes = model.num_classes
        unit, log_odds = ("bits", True) if params.layer == "output" else ("activation", False)
    else:
        targets = targets or _channel_targets(net(x[None])[0], params)
        labels = [f"{params.layer}[{t}]" for t in targets]
        unit, log_odds, num_classes = "activation", False, None
    readout = BackendReadout(net, params.layer, targets, model.device)
    announce("sampler")
    positions = window_positions(H, W, params.window, params.stride, device=x.device)
    sampler = make_sampler(params.sampler, x, params.window, positions, stats,
                           padding=params.padding, fill=params.fill)
    windows, why = None, None
    if incremental:
        announce("incremental")
        windows, why = _incremental(model, x, params, list(targets))
        if windows is None:  # the model does not trace: the backend, naively
            net, note = _net(model, params.layer, runtime.replace(backend=backend), auto)
            readout = BackendReadout(net, params.layer, targets, model.device)
    # the scores run where a naive sweep would (incremental inference only helps windows);
    # a model the backend could not convert stays on torch for them too
    recorded = {**readout.runtime.as_dict(), "incremental": windows is not None,
                "incremental_mode": mode, **({"incremental_note": why} if why else {}),
                **({"backend_note": note} if note else {})}
    if (err := precision_error(readout.runtime.precision)) is not None:
        recorded["precision_error"] = err  # an approximation: its measured bound
    forward = Forward(readout, batch_size=runtime.batch_size or 1,
                      precision=runtime.precision, fixed_batch=readout.fixed_batch,
                      channels_last=readout.channels_last, window_readout=windows)
    return Setup(x=x, params=params, prediction=prediction, targets=list(targets),
                 labels=labels, unit=unit, log_odds=log_odds, num_classes=num_classes,
                 forward=forward, sampler=sampler, started=started, runtime=recorded,
                 torch_threads=readout.torch_threads,
                 score_backend="torch" if note else backend, choices=runtime)


def _net(model: Any, layer: str, runtime: Runtime, fallback: bool) -> tuple[Any, str | None]:
    """The backend's net; when the caller left the backend to ``auto`` and conversion fails
    (a user model file the converter cannot read), torch eager and why."""
    try:
        return net_for(model, layer, runtime), None
    except Exception as e:  # noqa: BLE001 (any converter error: the torch path still works)
        if not fallback or runtime.backend == "torch":
            raise
        log.warning("backend %s cannot run %s (%s); using torch", runtime.backend, model.name, e)
        return net_for(model, layer, runtime.replace(backend="torch")), (
            f"{runtime.backend} could not convert the model, so torch ran it: {str(e)[:160]}")


def score_readout(model: Any, setup: Setup) -> tuple[BackendReadout, str | None]:
    """The faithfulness scores' readout, softmax probabilities of the targets (B, T): the
    sweep's backend at its batch size, always fp32 (the protocol scores fp32 probabilities),
    so the scores run as fast as the sweep (docs/performance.md) and equal eager torch's
    to float rounding. The net is the sweep's own when the sweep ran the backend in fp32
    (memoised per model); else it is converted once per process (or read from the cache)."""
    runtime = setup.choices.replace(backend=setup.score_backend, precision="fp32")
    net, note = _net(model, "output", runtime, setup.choices.backend == "auto")
    return BackendReadout(net, "output", setup.targets, model.device), note


def _incremental(model: Any, x: torch.Tensor, params: ExplainParams, targets: list[int]
                 ) -> tuple[WindowReadout | None, str | None]:
    """The incremental window readout, or None and why (a model torch.fx cannot trace,
    such as an exported one: then the naive sweep)."""
    try:
        return window_readout(model, x, params.layer,
                              torch.tensor(targets, device=x.device)), None
    except IncrementalUnsupportedError as e:
        return None, str(e)[:200]


def _class_targets(model: Any, x: torch.Tensor, params: ExplainParams,
                   prediction: list[dict[str, Any]]) -> list[int]:
    kind, spec = parse_target(params.target)
    num_classes = model.num_classes
    if kind == "top":
        targets = [p["class_index"] for p in prediction[:spec]]
        if len(targets) < spec:
            targets = torch.softmax(model(x[None]).float(), 1)[0].topk(spec).indices.tolist()
        return targets
    bad = [t for t in spec if t >= num_classes]
    if bad:
        raise InvalidParameterError(
            f"target class {bad[0]} does not exist: the model has {num_classes} "
            f"classes (0..{num_classes - 1})", field="target",
        )
    return list(spec)


def _channel_targets(acts: torch.Tensor, params: ExplainParams) -> list[int]:
    """Channels to explain from the layer's mean activations ``acts`` (channels,)."""
    kind, spec = parse_target(params.target)
    n_ch = acts.numel()
    if kind == "top":
        return acts.topk(min(spec, n_ch)).indices.tolist()
    if max(spec) >= n_ch:
        raise InvalidParameterError(
            f"channel {max(spec)} does not exist: layer {params.layer!r} has "
            f"{n_ch} channels (0..{n_ch - 1})", field="target",
        )
    return list(spec)
