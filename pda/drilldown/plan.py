"""The approximate drill-down's parameters and pass count, without torch (the API plans
and caps jobs with them). The algorithm itself is :mod:`pda.drilldown.refine`."""

from __future__ import annotations

import math

from ..errors import InvalidParameterError

DEFAULT_FACTOR = 4  # coarse stride = 4 x the fine stride
DEFAULT_MARGIN = 1  # cells around a refined cell that are refined too
#: the error check (pda.drilldown.check): SSIM window side, tiles swept
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
