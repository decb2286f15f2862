"""Faithfulness of a relevance map: deletion and insertion curves (Petsiuk, Das, Saenko,
"RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018, §4.1).

Shapes: C channels, H x W image, N = H * W pixels, T targets, R random baseline orders,
P curve points, B forward batch size.

**Deletion** replaces pixels (all channels), most relevant first, by a fill canvas and
reads the softmax probability of the target class after every step; a faithful map makes
it fall fast, so the area under the curve (AUC) is low. **Insertion** starts from the
canvas and puts the image's pixels back in the same order; the AUC should be high.

The protocol (docs/faithfulness.md):

- order: pixels by relevance, descending; ties broken by raster index (row-major), so an
  order is a pure function of the map;
- step: ``ceil(step * N)`` pixels per step (the last step may be smaller); the curve has
  one point per step plus the start, x = pixels changed / N in [0, 1];
- fill (the deletion fill and the insertion canvas, the same image): ``blur`` is a
  Gaussian blur of the image (sigma ``BLUR_SIGMA`` px, reflected borders); ``grey`` is
  0.5 in every channel;
- score: the target's softmax probability; AUC by the trapezoid rule on x;
- baseline: the same curves for R random orders of ``block`` x ``block`` pixel blocks
  (blocks shuffled with NumPy's generator seeded by (seed, r); pixels inside a block in
  raster order); the baseline reports the mean over the R orders.

The unmodified image and the canvas are the curves' shared end points: two passes serve
every curve. Each curve then costs P - 2 passes, and the random orders' passes are shared
by all targets (the forward function returns every target's probability).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..defaults import (
    FAITHFULNESS_BLOCK,
    FAITHFULNESS_FILL,
    FAITHFULNESS_FILLS,
    FAITHFULNESS_ORDERS,
    FAITHFULNESS_STEP,
)
from ..errors import InvalidParameterError
from ..grid import passes_needed, step_counts

#: (B, C, H, W) pixel-space images -> (B, T) softmax probabilities of the targets
Probabilities = Callable[[torch.Tensor], torch.Tensor]
#: the blur fill's Gaussian sigma in pixels (RISE blurs its insertion canvas likewise)
BLUR_SIGMA = 5.0
#: curve values kept in the document
DECIMALS = 4


def relevance_order(relevance: torch.Tensor) -> torch.Tensor:
    """(H, W) map -> (N,) pixel indices, most relevant first; ties in raster order."""
    return torch.sort(-relevance.flatten().double(), stable=True).indices.cpu()


def block_order(height: int, width: int, block: int, rng: np.random.Generator) -> torch.Tensor:
    """(N,) pixel indices: ``block`` x ``block`` blocks in a random order (edge blocks may be
    smaller), raster order inside each block."""
    if block < 1:
        raise InvalidParameterError(f"faithfulness block {block} must be at least 1")
    rows = np.arange(height)[:, None] // block
    cols = np.arange(width)[None, :] // block
    block_id = rows * math.ceil(width / block) + cols  # (H, W)
    rank = rng.permutation(int(block_id.max()) + 1)[block_id].ravel()  # (N,) block's turn
    return torch.from_numpy(np.lexsort((np.arange(height * width), rank)).copy())


def fill_canvas(x: torch.Tensor, fill: str) -> torch.Tensor:
    """The deletion fill and insertion start for image ``x`` (C, H, W)."""
    if fill == "grey":
        return torch.full_like(x, 0.5)
    if fill == "blur":
        return gaussian_blur(x, BLUR_SIGMA)
    raise InvalidParameterError(
        f"unknown faithfulness fill {fill!r}; use {' or '.join(FAITHFULNESS_FILLS)}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W), radius 2 sigma, borders reflected."""
    C, H, W = x.shape
    r = max(1, min(int(2 * sigma), H - 1, W - 1))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    y = F.pad(x[None], (r, r, r, r), mode="reflect")  # (1, C, H+2r, W+2r)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)  # along rows
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)  # (1, C, H, W)
    return y[0]


def auc(values: np.ndarray, counts: list[int]) -> float:
    """Trapezoid area under a curve sampled at x = counts / N."""
    x = np.asarray(counts, dtype=np.float64) / counts[-1]
    v = np.asarray(values, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (v[1:] + v[:-1]) / 2))


def curves(
    probabilities: Probabilities,
    x: torch.Tensor,
    canvas: torch.Tensor,
    orders: list[torch.Tensor],
    counts: list[int],
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Deletion and insertion curves of every order: (len(orders), 2, P, T) probabilities
    (axis 1: 0 = deletion, 1 = insertion), and the forward passes used; ``progress(done,
    total)`` after every batch."""
    if batch_size < 1:
        raise InvalidParameterError(f"batch size must be at least 1, got {batch_size}")
    C, H, W = x.shape
    N, P = H * W, len(counts)
    dev = x.device
    with torch.no_grad():
        ends = probabilities(torch.stack([x, canvas])).float().cpu()  # (2, T)
    T = ends.shape[1]
    out = torch.empty(len(orders), 2, P, T)
    out[:, 0, 0], out[:, 0, -1] = ends[0], ends[1]  # deletion: image ... canvas
    out[:, 1, 0], out[:, 1, -1] = ends[1], ends[0]  # insertion: canvas ... image
    ranks = []
    for order in orders:
        rank = torch.empty(N, dtype=torch.long)
        rank[order] = torch.arange(N)
        ranks.append(rank.to(dev))  # (N,) when each pixel changes
    jobs = [(o, mode, i) for o in range(len(orders)) for mode in (0, 1) for i in range(1, P - 1)]
    n_changed = torch.tensor(counts, device=dev)  # (P,) pixels changed at each point
    passes = 2
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        rank = torch.stack([ranks[o] for o, _, _ in chunk])  # (B, N)
        n = n_changed[[i for _, _, i in chunk]]  # (B,)
        changed = (rank < n[:, None]).view(-1, 1, H, W)  # (B, 1, H, W)
        deleting = torch.tensor([m == 0 for _, m, _ in chunk], device=dev).view(-1, 1, 1, 1)
        # deletion: the changed pixels show the canvas; insertion: they show the image
        shows_image = torch.where(deleting, ~changed, changed)  # (B, 1, H, W)
        batch = torch.where(shows_image, x[None], canvas[None])  # (B, C, H, W)
        with torch.no_grad():
            p = probabilities(batch).float().cpu()  # (B, T)
        for row, (o, mode, i) in enumerate(chunk):
            out[o, mode, i] = p[row]
        passes += len(chunk)
        if progress is not None:
            progress(passes, 2 + len(jobs))
    return out.numpy(), passes


def score(
    probabilities: Probabilities,
    x: torch.Tensor,
    relevance: torch.Tensor,
    *,
    fill: str = FAITHFULNESS_FILL,
    step: float = FAITHFULNESS_STEP,
    orders: int = FAITHFULNESS_ORDERS,
    block: int = FAITHFULNESS_BLOCK,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Score the maps ``relevance`` (T, H, W) of image ``x`` (C, H, W): one ``faithfulness``
    object per target (target t is column t of ``probabilities``) and the passes used."""
    C, H, W = x.shape
    T = relevance.shape[0]
    if relevance.shape[1:] != (H, W):
        raise InvalidParameterError(f"relevance {tuple(relevance.shape)} does not match the "
                                    f"image {H}x{W}")
    if orders < 1:
        raise InvalidParameterError(f"faithfulness needs at least one random order, got {orders}")
    counts = step_counts(H * W, step)
    canvas = fill_canvas(x, fill)
    maps = [relevance_order(relevance[t]) for t in range(T)]
    randoms = [block_order(H, W, block, np.random.default_rng([seed, r])) for r in range(orders)]
    vals, passes = curves(probabilities, x, canvas, maps + randoms, counts,
                          batch_size=batch_size, progress=progress)  # (T + R, 2, P, T)
    vals = vals.astype(np.float64)
    assert passes == passes_needed(H * W, T, step, orders)
    results = []
    for t in range(T):
        base = vals[T:, :, :, t]  # (R, 2, P)
        base_auc = [[auc(base[r, m], counts) for m in (0, 1)] for r in range(orders)]
        results.append({
            "deletion_auc": round(auc(vals[t, 0, :, t], counts), 6),
            "insertion_auc": round(auc(vals[t, 1, :, t], counts), 6),
            "baseline": {
                "deletion_auc": round(float(np.mean([a[0] for a in base_auc])), 6),
                "insertion_auc": round(float(np.mean([a[1] for a in base_auc])), 6),
                "orders": orders, "block": block, "seed": seed,
            },
            "protocol": {
                "fill": fill, "step": step, "target": "softmax probability of the class",
                "order": "relevance descending, ties in raster order",
                "curve_points": len(counts),
                **({"blur_sigma": BLUR_SIGMA} if fill == "blur" else {}),
            },
            "curves": {
                "x": [round(c / counts[-1], DECIMALS) for c in counts],
                "deletion": np.round(vals[t, 0, :, t], DECIMALS).tolist(),
                "insertion": np.round(vals[t, 1, :, t], DECIMALS).tolist(),
                "baseline_deletion": np.round(base[:, 0].mean(0), DECIMALS).tolist(),
                "baseline_insertion": np.round(base[:, 1].mean(0), DECIMALS).tolist(),
            },
            "forward_passes": passes,
        })
    return results, passes


def score_explanation(
    model: Any,
    x: torch.Tensor,
    relevance: torch.Tensor,
    targets: list[int],
    *,
    seed: int = 0,
    batch_size: int = 64,
    **protocol: Any,
) -> tuple[list[dict[str, Any]], int]:
    """:func:`score` for a :class:`pda.models.registry.LoadedModel` (pixel space in, logits out) and
    class ``targets``: the probabilities are the softmax of the model's logits, in fp32."""
    idx = torch.tensor(targets, device=x.device)

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(batch).float(), dim=1)[:, idx]  # (B, T)

    return score(probabilities, x, relevance.to(x.device), seed=seed, batch_size=batch_size,
                 **protocol)


__all__ = ["BLUR_SIGMA", "auc", "block_order", "curves", "fill_canvas", "gaussian_blur",
           "passes_needed", "relevance_order", "score", "score_explanation", "step_counts"]
