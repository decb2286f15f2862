"""One explanation run, owned by the engine: every process that explains calls it.

:class:`Run` runs one explanation: the set-up (:mod:`.setup`), then the exact sweep or the
drill-down, over all windows or a chunk's, with an optional checkpoint hook, then the
maps and the faithfulness scores. The library (``pda.explain``), the worker's whole job,
a chunk of a split job, the merge and ``pda evaluate`` all call it and pass only what
differs: the windows, a checkpoint store, a progress sink, chunks' merged sweep. (As
captum's ``FeatureAblation.attribute`` is the one loop its methods share.)

Progress is one :class:`Status` per step of the set-up and per forward batch: the phase
(``preparing``, ``sweeping``, ``scoring``), the phase's own count, and the run's forward
passes done of its planned total (:func:`pda.params.plan`: the total the API fixed at
submit). The sink may raise to stop the run (a cancel, a shutdown): the run stops there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..grid import (
    BLOCK_WINDOWS,
    block_ranges,
    passes_per_window,
)
from ..params import ExplainParams, faithfulness_passes, plan
from ..runtime import Runtime
from .backends import torch_threads
from .drilldown.refine import explain_drilldown
from .faithfulness import score
from .setup import STEPS, Setup, prepare, score_readout
from .stats import SamplerStats
from .sweep import Sweep, merge_partials, pack_partial, relevance_maps, run_sweep

#: a whole job's sweep is checkpointed about every this many passes (whole blocks) ...
SEGMENT_PASSES = 5_000
#: ... and at least this many times, so a rerun loses at most a tenth of its sweep
MIN_SEGMENTS = 10


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


@dataclass(frozen=True)
class Status:
    """Where a run is: its phase, the phase's own count (preparation steps, or forward
    passes), and the run's forward passes done of its planned total."""

    phase: str  # preparing, sweeping, scoring (pda.defaults.PHASES)
    phase_done: int
    phase_total: int
    done: int
    total: int


Report = Callable[[Status], None]


class Checkpoints(Protocol):
    """Where a whole run keeps its sweep's finished segments (the worker's: the job store),
    so that a rerun resumes instead of restarting."""

    def load(self) -> dict[tuple[int, int], bytes]:
        """Stored segments: window range -> partial sums (:func:`.sweep.pack_partial`)."""

    def save(self, segment: tuple[int, int], blob: bytes, passes: int) -> None:
        """Keep one finished segment; ``passes``: sweep passes kept so far."""

    def resumed(self, passes: int) -> None:
        """Told once, before the rest is swept, how many sweep passes were restored."""


def segments(n_windows: int, per_window: int) -> list[tuple[int, int]]:
    """Window ranges of a whole run's checkpoint segments: about :data:`SEGMENT_PASSES`
    passes each and at least :data:`MIN_SEGMENTS` of them (whole blocks, at least one)."""
    n_blocks = math.ceil(n_windows / BLOCK_WINDOWS)
    by_passes = math.ceil(SEGMENT_PASSES / (per_window * BLOCK_WINDOWS))
    return block_ranges(n_windows, max(1, min(by_passes, n_blocks // MIN_SEGMENTS)))


class Run:
    """One explanation of ``model``'s decision on pixel-space image ``x`` (C, H, W) in
    [0, 1]; preparing it is part of constructing it (announced through ``report``).

    ``runtime`` says how (:func:`.setup.prepare`); ``targets`` fixes the targets (a split
    job's planning run chose them); ``on_prediction`` gets the top-5 as soon as known."""

    def __init__(self, model: Any, x: torch.Tensor, params: ExplainParams,
                 stats: SamplerStats, runtime: Runtime, *, targets: list[int] | None = None,
                 report: Report | None = None,
                 on_prediction: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        C, H, W = x.shape
        self.model, self.params, self.report = model, params, report
        counted = plan(params, (H, W))
        self.windows = counted["windows"]
        self.per_window = passes_per_window(params.sampler, params.samples)
        self.sweep_total = counted["sweep_passes"]  # exact: windows x S + the image's pass
        self.total = counted["forward_passes"]  # the scores' passes for topK until known
        self.setup: Setup = prepare(model, x, params, stats, runtime, targets=targets,
                                    on_prediction=on_prediction, step=self._step)
        self.score_total = faithfulness_passes(params, (H, W), len(self.setup.targets))
        self.total = self.sweep_total + self.score_total

    # -- progress ---------------------------------------------------------------------------
    def _emit(self, phase: str, phase_done: int, phase_total: int, done: int,
              total: int | None = None) -> None:
        if self.report is not None:
            self.report(Status(phase, phase_done, phase_total, done,
                               self.total if total is None else total))

    def _step(self, name: str) -> None:
        """One preparation step starts: a status the caller can stop the run at."""
        self._emit("preparing", STEPS.index(name), len(STEPS), 0)

    # -- the sweep --------------------------------------------------------------------------
    def sweep(self, windows: tuple[int, int] | None = None, *,
              checkpoints: Checkpoints | None = None) -> Sweep:
        """The exact sweep of windows [a, b) of the full grid (all by default: then
        resumed from and saved to ``checkpoints`` segment by segment, when given). Every
        window gets the samples a one-process sweep gives it (randomness per block)."""
        if self.params.drilldown is not None:
            raise ValueError("a drill-down run sweeps through explain(), not sweep()")
        if windows is not None:  # a chunk: counted in its own passes, not the run's
            a, b = windows
            n = (b - a) * self.per_window
            return self._sweep(torch.arange(a, b), 0, n, run_offset=0, run_total=n)
        plan_ = segments(self.windows, self.per_window)
        if checkpoints is None or len(plan_) == 1:
            return self._sweep(None, 0, self.sweep_total - 1)
        return self._resumable(plan_, checkpoints)

    def _sweep(self, ids: torch.Tensor | None, offset: int, phase_total: int, *,
               run_offset: int = 1, run_total: int | None = None) -> Sweep:
        """Sweep windows ``ids`` (None: all); ``offset`` sweep passes were done before
        them, and the run's count starts ``run_offset`` above the sweep's (the unmodified
        image's pass of a whole run)."""
        def progress(d: int, _t: int) -> None:
            self._emit("sweeping", offset + d, phase_total, run_offset + offset + d, run_total)

        p = self.setup.params
        progress(0, 0)
        with torch_threads(self.setup.torch_threads):
            return run_sweep(self.setup.forward, self.setup.x, self.setup.sampler,
                             window=p.window, stride=p.stride, samples=p.samples, seed=p.seed,
                             window_ids=ids, progress=progress)

    def _resumable(self, plan_: list[tuple[int, int]], checkpoints: Checkpoints) -> Sweep:
        per, total = self.per_window, self.sweep_total - 1
        stored = checkpoints.load()
        parts = {seg: stored[seg] for seg in plan_ if seg in stored}  # another plan's: ignored
        done = sum((b - a) * per for a, b in parts)
        if parts:
            checkpoints.resumed(done)
        for seg in plan_:
            if seg in parts:
                continue
            sub = self._sweep(torch.arange(*seg), done, total)
            parts[seg] = pack_partial(sub)
            done += (seg[1] - seg[0]) * per
            checkpoints.save(seg, parts[seg], done)
        return merge_partials([parts[seg] for seg in plan_], self.windows)

    # -- the whole explanation --------------------------------------------------------------
    def explain(self, *, checkpoints: Checkpoints | None = None, swept: Sweep | None = None,
                seconds: float | None = None, scores: bool = True) -> Explanation:
        """The maps of the exact sweep (resumed from ``checkpoints``), of the drill-down,
        or of ``swept`` (a split job's chunks merged), then their faithfulness scores when
        the parameters ask for them (``scores=False`` leaves them out)."""
        setup = self.setup
        if swept is None and self.params.drilldown is not None:
            expl = self._drilldown()
        else:
            swept = swept if swept is not None else self.sweep(checkpoints=checkpoints)
            expl = conclude(setup, swept, seconds=seconds)
        return self.score(expl) if scores else expl

    def _drilldown(self) -> Explanation:
        setup = self.setup

        def progress(d: int, t: int) -> None:
            self._emit("sweeping", d, t, d)

        with torch_threads(setup.torch_threads):
            rel, counts, passes, approximation = explain_drilldown(
                setup.forward, setup.x, setup.sampler, self.params, log_odds=setup.log_odds,
                num_classes=setup.num_classes, progress=progress)
        return _explanation(setup, rel, counts, passes, None, approximation)

    def score(self, expl: Explanation) -> Explanation:
        """Score ``expl``'s maps by deletion/insertion (docs/faithfulness.md) when the
        parameters ask for it; the passes join ``expl.forward_passes``. Idempotent."""
        setup = self.setup
        if expl.faithfulness is not None or not self.score_total:
            return expl
        start = time.perf_counter()
        probabilities, note = score_readout(self.model, setup)
        began = time.perf_counter()  # after a first-time conversion of the scores' graph

        def progress(d: int, _t: int) -> None:
            self._emit("scoring", d, self.score_total, self.sweep_total + d)

        self._emit("scoring", 0, self.score_total, self.sweep_total)
        with torch_threads(probabilities.torch_threads):
            expl.faithfulness, used = score(
                probabilities, setup.x, torch.from_numpy(expl.relevance).to(setup.x.device),
                seed=self.params.seed, batch_size=setup.batch_size, progress=progress)
        rate = used / max(time.perf_counter() - began, 1e-9)
        expl.faithfulness_passes = used
        expl.forward_passes += used
        expl.seconds += time.perf_counter() - start
        expl.runtime = {**(expl.runtime or {}), "faithfulness": {
            **probabilities.runtime.as_dict(), "passes_per_second": round(rate, 2),
            **({"backend_note": note} if note else {})}}
        return expl


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
    progress: Callable[[int, int], None] | None = None,
    on_prediction: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Explanation:
    """Explain ``model``'s decision on ``x``: one :class:`Run`, start to end.

    ``progress(done, total)`` counts the sweep's window passes and then the scores' (the
    exact sweep's unmodified-image pass is not in either: callers add it), in one total
    fixed from the start."""
    exact = params.drilldown is None

    def report(s: Status) -> None:
        if progress is not None and s.phase != "preparing":
            progress(s.done - exact, s.total - exact)

    return Run(model, x, params, stats, runtime, report=report,
               on_prediction=on_prediction).explain()
