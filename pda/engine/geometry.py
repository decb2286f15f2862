"""Window geometry: where the k x k windows go and how window scores become pixel maps.

Shapes: C channels, H x W image, k window side, s stride, n_w windows, T targets.
Windows sit fully inside the image at rows 0, s, 2s, ... <= H - k (and likewise for
columns), the convention of Captum's ``Occlusion`` and of ``torch.nn.functional.fold``.
Pixels no window covers (the bottom/right edge when s does not divide H - k) get a
relevance of 0 and a count of 0, and are reported as uncovered (docs/algorithm.md §2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..grid import check_window, grid_shape


def window_positions(
    height: int, width: int, window: int, stride: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Top-left corners of every window, row-major: (n_w, 2) int64 as (row, col)."""
    check_window(height, width, window, stride)
    gh, gw = grid_shape(height, width, window, stride)
    rows = torch.arange(gh, device=device) * stride
    cols = torch.arange(gw, device=device) * stride
    return torch.cartesian_prod(rows, cols).reshape(-1, 2)  # (gh*gw, 2)


def windows_to_pixels(
    scores: torch.Tensor, height: int, width: int, window: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spread per-window scores over the pixels each window covers.

    ``scores`` is (n_w, T) in :func:`window_positions` order. Returns the per-pixel mean
    over covering windows (T, H, W) and the count of covering windows (H, W); uncovered
    pixels have mean 0 and count 0.
    """
    n_w, T = scores.shape
    gh, gw = grid_shape(height, width, window, stride)
    assert n_w == gh * gw, "scores must have one row per window"
    k2 = window * window
    # fold sums each window's k*k block into place: (1, T*k*k, n_w) -> (1, T, H, W)
    blocks = scores.t().unsqueeze(1).expand(T, k2, n_w).reshape(1, T * k2, n_w)
    total = F.fold(blocks, (height, width), window, stride=stride)[0]  # (T, H, W)
    ones = torch.ones(1, k2, n_w, dtype=scores.dtype, device=scores.device)
    counts = F.fold(ones, (height, width), window, stride=stride)[0, 0]  # (H, W)
    mean = torch.where(counts > 0, total / counts.clamp(min=1), torch.zeros_like(total))
    return mean, counts
