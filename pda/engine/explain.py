"""One explanation, end to end: parameters, targets, layer readouts, sweep, maps.

This is the adapter the CLI and the RQ job call: :func:`prepare`, :func:`sweep_part`,
:func:`conclude` (or :func:`explain`, all three) turn a model and a preprocessed image
into an :class:`Explanation` whose maps are NumPy arrays; :func:`pda.document.result_document`
makes the contract's result document of it. The numerics live in the
engine's other modules (:mod:`.sweep`, :mod:`.samplers`, :mod:`.faithfulness`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..defaults import PREDICTION_TOP, SAMPLERS
from ..drilldown.refine import explain_drilldown
from ..errors import InvalidParameterError
from ..grid import check_window
from ..params import ExplainParams, parse_target
from ..params import faithfulness_passes as planned_faithfulness_passes
from ..runtime import Runtime
from .backends import BackendReadout, net_for, resolve_backend, torch_threads
from .device import auto_batch_size, check_precision
from .faithfulness import score
from .geometry import window_positions
from .incremental import IncrementalUnsupportedError, window_readout
from .incremental.decisions import use_incremental
from .samplers import make_sampler
from .stats import SamplerStats
from .sweep import Progress, Sweep, WindowReadout, relevance_maps, run_sweep

log = logging.getLogger("pda.engine")


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
    runtime: dict[str, Any] | None = None  # backend, precision, device; incremental or not


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


@dataclass
class Setup:
    """Everything a sweep of one job needs, fixed before its first window pass: the same
    for a one-process run and for every chunk of a split job (:func:`prepare`)."""

    x: torch.Tensor  # (C, H, W) on the model's device
    params: ExplainParams
    prediction: list[dict[str, Any]]
    targets: list[int]
    labels: list[str]
    unit: str
    log_odds: bool
    num_classes: int | None
    readout: Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) -> (B, T)
    sampler: Any
    batch_size: int
    precision: str
    fixed_batch: bool
    started: float
    channels_last: bool = True
    runtime: dict[str, Any] | None = None
    torch_threads: int | None = None  # torch's threads while the backend runs
    window_readout: WindowReadout | None = None  # exact incremental inference, when used
    score_backend: str = "torch"  # what runs the faithfulness scores (concrete, never auto)
    #: the caller's runtime choices, with the batch size fixed (the scores' net uses them)
    choices: Runtime = Runtime()


def prepare(
    model: Any,
    x: torch.Tensor,
    params: ExplainParams,
    stats: SamplerStats,
    runtime: Runtime,
    *,
    targets: list[int] | None = None,
    on_prediction: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Setup:
    """Check the parameters, predict, fix the targets (``targets`` given: those, as the
    planning run of a split job chose them) and build the readout and the sampler.

    ``runtime`` (:class:`pda.runtime.Runtime`: the CLI's, the library's or the worker's,
    built once from the settings) says how: its backend runs the readout
    (:mod:`.backends`; ``auto`` is resolved here, once, for the model's device), its
    precision the forward passes, its cache dir keeps converted graphs across restarts.
    Where exact incremental inference (torch) was measured faster than that backend's
    naive sweep (:mod:`.incremental.decisions`), the windows go through it instead;
    ``runtime.incremental`` (``PDA_INCREMENTAL``) stands in for a request's
    ``incremental="auto"``. The model is already on its device: ``runtime.device`` chose
    it when it was loaded."""
    started = time.perf_counter()
    if params.sampler not in SAMPLERS:  # pydantic guards this too; keeps direct callers honest
        raise InvalidParameterError(f"unknown sampler {params.sampler!r}", field="sampler")
    C, H, W = x.shape
    check_window(H, W, params.window, params.stride)
    precision = runtime.precision
    check_precision(precision, model.device)  # fail before any forward pass
    x = x.to(model.device)
    prediction = predict(model, x)
    if on_prediction is not None:
        on_prediction(prediction)
    batch_size = runtime.batch_size or auto_batch_size(x.device, (H, W), model)
    runtime = runtime.replace(batch_size=batch_size)
    asked, cache_dir = runtime.backend, runtime.cache_dir
    backend = resolve_backend(asked, model.device, precision)  # once per job
    mode = runtime.incremental if params.incremental == "auto" else params.incremental
    incremental = params.drilldown is None and precision == "fp32" and use_incremental(
        mode, model.name, x.device.type, backend)
    net, note = _net(model, params.layer, "torch" if incremental else backend, asked == "auto",
                     precision=precision, batch_size=batch_size, cache_dir=cache_dir)
    if params.layer in ("output", "logits"):
        targets = targets or _class_targets(model, x, params, prediction)
        labels = [_label(model, t) for t in targets]
        num_classes = model.num_classes
        unit, log_odds = ("bits", True) if params.layer == "output" else ("activation", False)
    else:
        targets = targets or _channel_targets(net(x[None])[0], params)
        labels = [f"{params.layer}[{t}]" for t in targets]
        unit, log_odds, num_classes = "activation", False, None
    readout = BackendReadout(net, params.layer, targets, model.device)
    positions = window_positions(H, W, params.window, params.stride, device=x.device)
    sampler = make_sampler(params.sampler, x, params.window, positions, stats,
                           padding=params.padding, fill=params.fill)
    windows, why = _incremental(model, x, params, list(targets)) if incremental else (
        None, None)
    if incremental and windows is None:  # the model does not trace: the backend, naively
        net, note = _net(model, params.layer, backend, asked == "auto", precision=precision,
                         batch_size=batch_size, cache_dir=cache_dir)
        readout = BackendReadout(net, params.layer, targets, model.device)
    # the scores run where a naive sweep would (incremental inference only helps windows);
    # a model the backend could not convert stays on torch for them too
    score_backend = "torch" if note else backend
    recorded = {**readout.runtime.as_dict(), "incremental": windows is not None,
               "incremental_mode": mode, **({"incremental_note": why} if why else {}),
               **({"backend_note": note} if note else {})}
    return Setup(x=x, params=params, prediction=prediction, targets=list(targets),
                 labels=labels, unit=unit, log_odds=log_odds, num_classes=num_classes,
                 readout=readout, sampler=sampler, batch_size=batch_size,
                 precision=precision, fixed_batch=readout.fixed_batch, started=started,
                 channels_last=readout.channels_last, runtime=recorded,
                 torch_threads=readout.torch_threads, window_readout=windows,
                 score_backend=score_backend, choices=runtime)


def _net(model: Any, layer: str, backend: str, fallback: bool, **kw: Any
         ) -> tuple[Any, str | None]:
    """The backend's net; when the caller left the backend to ``auto`` and conversion fails
    (a user model file the converter cannot read), torch eager and why."""
    try:
        return net_for(model, layer, backend, **kw), None
    except Exception as e:  # noqa: BLE001 (any converter error: the torch path still works)
        if not fallback or backend == "torch":
            raise
        log.warning("backend %s cannot run %s (%s); using torch", backend, model.name, e)
        return net_for(model, layer, "torch", **kw), (
            f"{backend} could not convert the model, so torch ran it: {str(e)[:160]}")


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


def sweep_part(setup: Setup, window_ids: torch.Tensor | None = None, *,
               progress: Progress | None = None) -> Sweep:
    """Sweep the windows ``window_ids`` of the full grid (all by default): a whole job,
    or one chunk of a split one (the same samples either way, docs/algorithm.md)."""
    p = setup.params
    with torch_threads(setup.torch_threads):
        return run_sweep(
            setup.readout, setup.x, setup.sampler, window=p.window, stride=p.stride,
            samples=p.samples, batch_size=setup.batch_size, seed=p.seed, progress=progress,
            precision=setup.precision, fixed_batch=setup.fixed_batch, window_ids=window_ids,
            channels_last=setup.channels_last, window_readout=setup.window_readout,
        )


def conclude(setup: Setup, sweep: Sweep, *, seconds: float | None = None) -> Explanation:
    """The maps of a complete sweep (one process's, or the chunks' merged)."""
    p = setup.params
    C, H, W = setup.x.shape
    rel, counts = relevance_maps(
        sweep, H, W, p.window, p.stride, log_odds=setup.log_odds,
        train_size=p.train_size, num_classes=setup.num_classes,
    )
    return _explanation(setup, rel, counts, sweep.forward_passes + 1, seconds)


def _explanation(setup: Setup, rel: torch.Tensor, counts: torch.Tensor, passes: int,
                 seconds: float | None, approximation: dict[str, Any] | None = None
                 ) -> Explanation:
    return Explanation(
        prediction=setup.prediction, targets=setup.targets, labels=setup.labels,
        unit=setup.unit, relevance=rel.float().cpu().numpy(),
        counts=counts.round().to(torch.int32).cpu().numpy(), forward_passes=passes,
        seconds=time.perf_counter() - setup.started if seconds is None else seconds,
        approximation=approximation, runtime=setup.runtime,
    )


def explain(
    model: Any,
    x: torch.Tensor,
    params: ExplainParams,
    stats: SamplerStats,
    runtime: Runtime,
    *,
    progress: Progress | None = None,
    on_prediction: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Explanation:
    """Explain ``model``'s decision on pixel-space image ``x`` (C, H, W) in [0, 1].

    ``runtime`` says how (:func:`prepare`): batch size None picks one for the model's
    device (:func:`.device.auto_batch_size`); precision bf16/fp16 runs the sweep's forward
    passes under autocast (the reported prediction stays fp32); the backend runs them
    (:mod:`.backends`; ``auto`` = the fastest exact one for the device). The result
    records what ran (``Explanation.runtime``).
    """
    setup = prepare(model, x, params, stats, runtime, on_prediction=on_prediction)
    sweep_progress, score_progress = split_progress(progress, faithfulness_passes(setup))
    if params.drilldown is None:
        expl = conclude(setup, sweep_part(setup, progress=sweep_progress))
    else:
        with torch_threads(setup.torch_threads):
            rel, counts, passes, approximation = explain_drilldown(
                setup.readout, setup.x, setup.sampler, params, log_odds=setup.log_odds,
                num_classes=setup.num_classes, batch_size=setup.batch_size,
                progress=sweep_progress, precision=setup.precision,
                fixed_batch=setup.fixed_batch)
        expl = _explanation(setup, rel, counts, passes, None, approximation)
    return add_faithfulness(model, setup, expl, progress=score_progress)


def faithfulness_passes(setup: Setup) -> int:
    """Forward passes :func:`add_faithfulness` makes: 0 when off or for a hidden layer
    (a channel has no class probability to delete)."""
    C, H, W = setup.x.shape
    return planned_faithfulness_passes(setup.params, (H, W), len(setup.targets))


def split_progress(progress: Progress | None, extra: int
                   ) -> tuple[Progress | None, Progress | None]:
    """Progress callbacks for a sweep and then ``extra`` scoring passes, reported in one
    fixed total (the sweep's own total + ``extra``)."""
    if progress is None or not extra:
        return progress, None
    sweep_total = [0]

    def sweep(done: int, total: int) -> None:
        sweep_total[0] = total
        progress(done, total + extra)

    def score(done: int, _total: int) -> None:
        progress(sweep_total[0] + done, sweep_total[0] + extra)

    return sweep, score


def add_faithfulness(model: Any, setup: Setup, expl: Explanation, *,
                     progress: Progress | None = None) -> Explanation:
    """Score ``expl``'s maps by deletion/insertion (docs/faithfulness.md) when its
    parameters ask for it; the passes join ``expl.forward_passes``. Idempotent."""
    if expl.faithfulness is not None or not faithfulness_passes(setup):
        return expl
    start = time.perf_counter()
    probabilities, note = score_readout(model, setup)
    began = time.perf_counter()  # after a first-time conversion of the scores' graph
    with torch_threads(probabilities.torch_threads):
        expl.faithfulness, used = score(
            probabilities, setup.x, torch.from_numpy(expl.relevance).to(setup.x.device),
            seed=setup.params.seed, batch_size=setup.batch_size, progress=progress)
    rate = used / max(time.perf_counter() - began, 1e-9)
    expl.faithfulness_passes = used
    expl.forward_passes += used
    expl.seconds += time.perf_counter() - start
    expl.runtime = {**(expl.runtime or {}), "faithfulness": {
        **probabilities.runtime.as_dict(), "passes_per_second": round(rate, 2),
        **({"backend_note": note} if note else {})}}
    return expl


def score_readout(model: Any, setup: Setup) -> tuple[BackendReadout, str | None]:
    """The faithfulness scores' readout, softmax probabilities of the targets (B, T): the
    sweep's backend at its batch size, always fp32 (the protocol scores fp32 probabilities),
    so the scores run as fast as the sweep (docs/performance.md) and equal eager torch's
    to float rounding. The net is the sweep's own when the sweep ran the backend in fp32
    (memoised per model); else it is converted once per process (or read from the cache)."""
    net, note = _net(model, "output", setup.score_backend, setup.choices.backend == "auto",
                     precision="fp32", batch_size=setup.batch_size,
                     cache_dir=setup.choices.cache_dir)
    return BackendReadout(net, "output", setup.targets, model.device), note

