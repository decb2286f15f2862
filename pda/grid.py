"""Every pass count, torch-free: how many windows a sweep has, what one costs, how a sweep
is cut into blocks, what the faithfulness scores and the drill-down add. The engine
(torch), the API's plan at submit (:func:`pda.params.plan`) and the chunk planner (both
without torch) import these, so a chunked map equals a one-process map and the total the
API promises is the total the worker runs.

Windows sit fully inside the image at rows 0, s, 2s, ... <= H - k (and likewise for
columns), the convention of Captum's ``Occlusion`` and of ``torch.nn.functional.fold``.
"""

from __future__ import annotations

import math
from typing import Protocol

from .defaults import DETERMINISTIC_SAMPLERS, FAITHFULNESS_ORDERS, FAITHFULNESS_STEP
from .errors import InvalidParameterError

#: windows per block: randomness is drawn per block from a generator seeded by (seed,
#: block), and chunks hold whole blocks, so a map does not depend on how it is cut
BLOCK_WINDOWS = 64


class _HasDeterminism(Protocol):
    deterministic: bool


def check_window(height: int, width: int, window: int, stride: int) -> None:
    """Raise :class:`InvalidParameterError` unless the window/stride fit the image."""
    if window < 1:
        raise InvalidParameterError(f"window must be at least 1, got {window}", field="window")
    if window > height or window > width:
        raise InvalidParameterError(
            f"window {window} exceeds the image size {height}x{width} (the model's input)",
            field="window",
        )
    if stride < 1:
        raise InvalidParameterError(f"stride must be at least 1, got {stride}", field="stride")


def grid_shape(height: int, width: int, window: int, stride: int) -> tuple[int, int]:
    """Window positions along each axis; (0, 0) when the window does not fit."""
    if window > height or window > width:
        return 0, 0
    return (height - window) // stride + 1, (width - window) // stride + 1


def count_windows(height: int, width: int, window: int, stride: int) -> int:
    """Window positions of a sweep; 0 when the window does not fit."""
    gh, gw = grid_shape(height, width, window, stride)
    return gh * gw


def block_ranges(n_windows: int, blocks: int) -> list[tuple[int, int]]:
    """Window ranges [start, stop) of ``blocks`` whole blocks each (the last may be
    shorter): how a sweep is cut into a split job's chunks and into a whole job's
    checkpoint segments, so that each part draws exactly the full sweep's samples."""
    size = max(1, blocks) * BLOCK_WINDOWS
    return [(a, min(a + size, n_windows)) for a in range(0, n_windows, size)]


def blocks_within(passes: int, per_window: int) -> int:
    """Whole blocks of windows that ``passes`` forward passes cover (at least one)."""
    return max(1, passes // (per_window * BLOCK_WINDOWS))


def passes_per_window(sampler: str | _HasDeterminism, samples: int) -> int:
    """Forward passes one window costs: S samples, or one for a deterministic sampler
    (given by name, as the API has it, or as the engine's sampler object)."""
    deterministic = (sampler in DETERMINISTIC_SAMPLERS if isinstance(sampler, str)
                     else sampler.deterministic)
    return 1 if deterministic else samples


# --- the faithfulness scores (pda.engine.faithfulness runs exactly these passes) -------
def step_counts(n_pixels: int, step: float) -> list[int]:
    """Pixels changed at each curve point: 0, m, 2m, ..., N with m = ceil(step * N)."""
    if not 0.0 < step <= 1.0:
        raise InvalidParameterError(f"faithfulness step {step} must lie in (0, 1]")
    m = max(1, math.ceil(step * n_pixels - 1e-9))
    return list(range(0, n_pixels, m)) + [n_pixels]


def passes_needed(n_pixels: int, targets: int, step: float = FAITHFULNESS_STEP,
                  orders: int = FAITHFULNESS_ORDERS) -> int:
    """Forward passes of one scoring: the two shared end points, then the interior points
    of a deletion and an insertion curve for every target and every random order."""
    P = len(step_counts(n_pixels, step))
    return 2 + 2 * (P - 2) * (targets + orders)


# --- the drill-down (pda.engine.drilldown): its parameters and an upper bound of its passes
DEFAULT_FACTOR = 4  # coarse stride = 4 x the fine stride
DEFAULT_MARGIN = 1  # cells around a refined cell that are refined too
#: the error check (pda.engine.drilldown.check): SSIM window side, tiles swept
SSIM_SIDE = 11
DEFAULT_TILE = 1
DEFAULT_DRAWS = 8
DEFAULT_TARGETED = 2


def check_drilldown(stride: int, coarse_stride: int, fraction: float) -> int:
    """Validate the parameters; returns m = coarse_stride / stride."""
    if coarse_stride < stride or coarse_stride % stride:
        raise InvalidParameterError(
            f"coarse stride {coarse_stride} must be a multiple of the stride {stride} "
            f"(e.g. {DEFAULT_FACTOR * stride}), so coarse windows are fine windows",
            field="coarse_stride",
        )
    if not 0.0 <= fraction <= 1.0:
        raise InvalidParameterError(
            f"drill-down fraction {fraction} must lie in [0, 1]", field="drilldown")
    return coarse_stride // stride


def coarse_stride_for(stride: int, coarse_stride: int | None) -> int:
    """The coarse stride asked for, or the default DEFAULT_FACTOR x stride."""
    return coarse_stride or DEFAULT_FACTOR * stride


def nodes_on_axis(n: int, m: int) -> int:
    """Coarse nodes along an axis of n fine windows: 0, m, 2m, ... and n - 1."""
    return len(range(0, n, m)) + (1 if (n - 1) % m else 0)


def plan_drilldown(height: int, width: int, window: int, stride: int, coarse_stride: int,
                   fraction: float, per_window: int) -> int:
    """An upper bound of a drill-down's forward passes (the refined cells and the check's
    overlap with them are only known after the coarse sweep)."""
    m = check_drilldown(stride, coarse_stride, fraction)
    gh, gw = (height - window) // stride + 1, (width - window) // stride + 1
    nr, nc = nodes_on_axis(gh, m), nodes_on_axis(gw, m)
    cells = max(nr - 1, 0) * max(nc - 1, 0)
    refined = math.ceil(fraction * cells) * (m + 1) ** 2
    side = (DEFAULT_TILE + SSIM_SIDE - 1 + window - 1) // stride + 1  # a tile's footprint
    check = (DEFAULT_TARGETED + DEFAULT_DRAWS) * side * side
    windows = min(gh * gw, nr * nc + refined + check)
    return windows * per_window + 3  # one unmodified-image pass per stage
