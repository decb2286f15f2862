"""Approximate drill-down: a coarse sweep everywhere, the fine stride only where it matters.

Shapes: the fine window grid is gh x gw (n_w = gh*gw windows at stride s, row-major as
:func:`pda.engine.geometry.window_positions`), m = coarse_stride / s, T targets, H x W pixels.

1. **Coarse.** Every m-th window of the fine grid along each axis, plus the last row and
   column, is swept. These are fine-grid windows, so their scores are exact and reused.
2. **Interpolate.** The other windows' scores are interpolated bilinearly from the coarse
   nodes (``interpolation="linear"``; ``"nearest"`` copies the nearest node). The grid
   of coarse nodes cuts the fine grid into cells of (m+1) x (m+1) windows.
3. **Refine.** Cells are ranked by |relevance|: the largest |score| at their four corner
   nodes, each target's scores divided by that target's largest |score|, and the most
   relevant target counts (so every target's strong regions are refined, whatever its
   scale). A cell's rank is the best within ``margin`` cells, which refines the
   neighbourhood of strong windows too. Every fine window of the top ``fraction`` of the
   cells is swept and replaces its interpolated score.
4. **Check.** :mod:`.check` estimates the SSIM and max |difference| against the
   exact map from a sample of windows swept both ways.

Only window scores are approximated: the pixel map is still the mean over the covering
fine windows (:func:`pda.engine.geometry.windows_to_pixels`). ``fraction=1`` sweeps every window
and gives the exact map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import InvalidParameterError
from ...grid import (
    DEFAULT_MARGIN,
    check_drilldown,
    coarse_stride_for,
    grid_shape,
    passes_per_window,
    plan_drilldown,
)
from ..geometry import windows_to_pixels
from ..samplers import Sampler
from ..sweep import (
    DEFAULT_TRAIN_SIZE,
    Forward,
    Progress,
    Readout,
    run_sweep,
    window_scores,
)
from .check import estimate_error
from .ssim import SIDE

#: full-grid window ids (n,) sorted and unique -> window scores (n, T), in that order
ScoreFn = Callable[[torch.Tensor], torch.Tensor]

INTERPOLATIONS = ("linear", "nearest")
CRITERIA = ("magnitude", "variation")


class SweepScores:
    """A :data:`ScoreFn` over :func:`pda.engine.sweep.run_sweep`: the asked windows, each with the
    samples the full sweep would draw for it; counts every forward pass it makes."""

    def __init__(self, forward: Forward | Readout, x: torch.Tensor, sampler: Sampler, *,
                 window: int, stride: int, samples: int, log_odds: bool, seed: int = 0,
                 train_size: int = DEFAULT_TRAIN_SIZE, num_classes: int | None = None,
                 progress: Progress | None = None, planned: int = 0) -> None:
        self.forward, self.x, self.sampler = forward, x, sampler
        self.sweep_kw = dict(window=window, stride=stride, samples=samples, seed=seed)
        self.score_kw = dict(log_odds=log_odds, train_size=train_size, num_classes=num_classes)
        self.per_window = passes_per_window(sampler, samples)
        self.progress, self.planned = progress, planned
        self.passes = 0  # window passes plus one unmodified-image pass per call

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        done = self.passes

        def step(n: int, _total: int) -> None:
            if self.progress is not None:
                self.progress(min(done + n, self.planned), self.planned)

        sweep = run_sweep(self.forward, self.x, self.sampler, window_ids=ids, progress=step,
                          **self.sweep_kw)
        self.passes += sweep.forward_passes + 1
        return window_scores(sweep, **self.score_kw).cpu()  # (n, T)


@dataclass
class DrillDown:
    """Window scores of a drill-down and what they cost."""

    scores: torch.Tensor  # (n_w, T) exact where ``computed``, interpolated elsewhere
    computed: torch.Tensor  # (n_w,) bool
    coarse_windows: int
    refined_windows: int
    check_windows: int
    error: dict[str, Any] = field(default_factory=dict)


def axis_nodes(n: int, m: int) -> torch.Tensor:
    """Coarse node indices along an axis of n fine windows: 0, m, 2m, ... and n - 1."""
    nodes = torch.arange(0, n, m)
    if nodes[-1] != n - 1:
        nodes = torch.cat([nodes, torch.tensor([n - 1])])
    return nodes


def _cell_of(n: int, nodes: torch.Tensor) -> torch.Tensor:
    """(n,) index of the cell (between nodes j and j+1) holding each fine index."""
    j = torch.searchsorted(nodes, torch.arange(n), right=True) - 1
    return j.clamp(0, max(len(nodes) - 2, 0))


def interpolation_matrix(n: int, nodes: torch.Tensor, mode: str = "linear") -> torch.Tensor:
    """(n, len(nodes)) weights: fine values = matrix @ node values, exact at the nodes."""
    M = torch.zeros(n, len(nodes), dtype=torch.float64)
    if len(nodes) == 1:
        M[:, 0] = 1.0
        return M
    j = _cell_of(n, nodes)  # (n,)
    lo, hi = nodes[j].double(), nodes[j + 1].double()
    t = (torch.arange(n).double() - lo) / (hi - lo)  # (n,) position inside the cell
    if mode == "nearest":
        t = (t > 0.5).double()
    elif mode != "linear":
        raise InvalidParameterError(
            f"unknown interpolation {mode!r}; use {' or '.join(INTERPOLATIONS)}")
    rows = torch.arange(n)
    M[rows, j] = 1 - t
    M[rows, j + 1] += t
    return M


def interpolate(coarse: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, gh: int,
                gw: int, mode: str = "linear") -> torch.Tensor:
    """Coarse node scores (nr, nc, T) -> fine grid scores (gh, gw, T), separably."""
    R = interpolation_matrix(gh, rows, mode).to(coarse)  # (gh, nr)
    C = interpolation_matrix(gw, cols, mode).to(coarse)  # (gw, nc)
    return torch.einsum("ia,abt,jb->ijt", R, coarse, C)


def _normalised(coarse: torch.Tensor) -> torch.Tensor:
    """Scores / each target's max |score|: (nr, nc, T) -> (nr, nc, T) in [-1, 1]."""
    peak = coarse.abs().flatten(0, 1).amax(0).clamp(min=1e-300)  # (T,)
    return coarse / peak


def cell_importance(coarse: torch.Tensor, criterion: str = "magnitude") -> torch.Tensor:
    """(nr-1, nc-1) importance of each cell from its four corner nodes (nr, nc, T).

    ``magnitude``: the largest normalised |score| at a corner (the issue's "top |relevance|");
    ``variation``: the largest spread between corners (where interpolation is least sure).
    Both take the most demanding target.
    """
    a = _normalised(coarse)
    corners = torch.stack([a[:-1, :-1], a[:-1, 1:], a[1:, :-1], a[1:, 1:]])  # (4,nr-1,nc-1,T)
    if criterion == "magnitude":
        return corners.abs().amax(0).amax(-1)
    if criterion == "variation":
        return (corners.amax(0) - corners.amin(0)).amax(-1)
    raise InvalidParameterError(f"unknown criterion {criterion!r}; use {' or '.join(CRITERIA)}")


def refine_cells(importance: torch.Tensor, fraction: float, margin: int) -> torch.Tensor:
    """(nr-1, nc-1) bool: the top ``fraction`` of cells by importance dilated by ``margin``."""
    n_cells = importance.numel()
    take = min(n_cells, int(torch.ceil(torch.tensor(fraction * n_cells)).item()))
    if take == 0:
        return torch.zeros_like(importance, dtype=torch.bool)
    k = 2 * margin + 1
    dilated = F.max_pool2d(importance[None, None], k, stride=1, padding=margin)[0, 0]
    # rank by the neighbourhood's best, ties by the cell's own importance
    key = dilated.flatten() * 2 + importance.flatten() / importance.max().clamp(min=1e-300)
    order = torch.argsort(key, descending=True, stable=True)
    chosen = torch.zeros(n_cells, dtype=torch.bool)
    chosen[order[:take]] = True
    return chosen.reshape(importance.shape)


def cell_windows(cells: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 gw: int) -> torch.Tensor:
    """Sorted unique fine window ids inside the chosen cells (corners and edges included)."""
    ids = []
    for a, b in cells.nonzero().tolist():
        r = torch.arange(int(rows[a]), int(rows[a + 1]) + 1)
        c = torch.arange(int(cols[b]), int(cols[b + 1]) + 1)
        ids.append((r[:, None] * gw + c[None, :]).reshape(-1))  # (cell windows,)
    if not ids:
        return torch.zeros(0, dtype=torch.long)
    return torch.unique(torch.cat(ids))


def drilldown(
    score_fn: ScoreFn, height: int, width: int, window: int, stride: int, *,
    coarse_stride: int, fraction: float, margin: int = DEFAULT_MARGIN,
    interpolation: str = "linear", criterion: str = "magnitude", seed: int = 0,
    check: dict[str, int] | None = None,
) -> DrillDown:
    """Coarse sweep, interpolation, refinement of the top cells, error estimate.

    ``score_fn`` sweeps the given fine windows (``run_sweep(..., window_ids=)``) and
    returns their scores; it is called once per stage (coarse, refine, check). ``check``
    sizes the error estimate (:func:`.check.estimate_error` keywords).
    """
    m = check_drilldown(stride, coarse_stride, fraction)
    gh, gw = grid_shape(height, width, window, stride)
    rows, cols = axis_nodes(gh, m), axis_nodes(gw, m)
    coarse_ids = (rows[:, None] * gw + cols[None, :]).reshape(-1)  # (nr*nc,) sorted
    coarse = score_fn(coarse_ids).double()  # (nr*nc, T)
    T = coarse.shape[1]
    grid = coarse.reshape(len(rows), len(cols), T)  # (nr, nc, T)
    scores = interpolate(grid, rows, cols, gh, gw, interpolation).reshape(gh * gw, T)
    scores[coarse_ids] = coarse
    computed = torch.zeros(gh * gw, dtype=torch.bool)
    computed[coarse_ids] = True
    refined = torch.zeros(0, dtype=torch.long)
    if len(rows) > 1 and len(cols) > 1:
        cells = refine_cells(cell_importance(grid, criterion), fraction, margin)
        refined = cell_windows(cells, rows, cols, gw)
        refined = refined[~computed[refined]]  # (n_r,) sorted, coarse nodes excluded
    if len(refined):
        scores[refined] = score_fn(refined).double()
        computed[refined] = True
    spread = _spread(grid, rows, cols, gh, gw) * ~computed  # (n_w,) zero where exact
    error, n_check = estimate_error(
        score_fn, scores, computed, spread, height, width, window, stride, seed=seed,
        **(check or {}))
    return DrillDown(scores=scores, computed=computed, coarse_windows=len(coarse_ids),
                     refined_windows=len(refined), check_windows=n_check, error=error)


def _spread(grid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, gh: int,
            gw: int) -> torch.Tensor:
    """(n_w,) how unsure each window's interpolation is: its cell's normalised score range.

    Guides the error estimate to the riskiest regions (a heuristic, not a bound).
    """
    if len(rows) < 2 or len(cols) < 2:
        return torch.zeros(gh * gw, dtype=torch.float64)
    cell = cell_importance(grid, "variation")  # (nr-1, nc-1)
    return cell[_cell_of(gh, rows)][:, _cell_of(gw, cols)].reshape(-1).double()


def explain_drilldown(
    forward: Forward, x: torch.Tensor, sampler: Sampler, params: Any, *, log_odds: bool,
    num_classes: int | None, progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, Any]]:
    """:func:`drilldown` for :func:`pda.engine.explain.explain`: relevance (T, H, W), counts (H, W),
    forward passes and the result document's ``approximation`` section."""
    C, H, W = x.shape
    k, s = params.window, params.stride
    coarse_stride = coarse_stride_for(s, params.coarse_stride)
    if H < SIDE or W < SIDE:
        raise InvalidParameterError(
            f"drill-down needs an input of at least {SIDE}x{SIDE} pixels to estimate its "
            f"error (SSIM), got {H}x{W}", field="drilldown")
    per = passes_per_window(sampler, params.samples)
    fn = SweepScores(
        forward, x, sampler, window=k, stride=s, samples=params.samples, log_odds=log_odds,
        train_size=params.train_size, num_classes=num_classes, progress=progress,
        planned=plan_drilldown(H, W, k, s, coarse_stride, params.drilldown, per),
        seed=params.seed)
    d = drilldown(fn, H, W, k, s, coarse_stride=coarse_stride, fraction=params.drilldown,
                  seed=params.seed)
    rel, counts = windows_to_pixels(d.scores, H, W, k, s)
    n_w = len(d.scores)
    stage = {name: n * per + (1 if n else 0) for name, n in
             (("coarse", d.coarse_windows), ("refined", d.refined_windows),
              ("check", d.check_windows))}
    assert sum(stage.values()) == fn.passes, "every pass is counted in one stage"
    exact = n_w * per + 1
    error = {**d.error, "forward_passes": stage["check"]}
    return rel, counts, fn.passes, {
        "mode": "drilldown", "coarse_stride": coarse_stride, "fraction": params.drilldown,
        "margin": DEFAULT_MARGIN, "interpolation": "linear", "criterion": "magnitude",
        "forward_passes": fn.passes, "exact_forward_passes": exact,
        "saving": round(exact / fn.passes, 3),
        "windows": {"total": n_w, "coarse": d.coarse_windows, "refined": d.refined_windows,
                    "interpolated": n_w - int(d.computed.sum()), "check": d.check_windows},
        "stage_passes": stage, "error": error,
    }
