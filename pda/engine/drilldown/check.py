"""How far a drill-down's map is from the exact one, estimated without the exact map.

Shapes: gh x gw fine window grid (n_w windows), T targets, H x W pixels; the SSIM map
(:mod:`.ssim`) is Hv x Wv = (H - 10) x (W - 10), cut into P x P tiles.

SSIM is the mean of a local SSIM map, and a local SSIM value needs the exact pixel map
on its 11 x 11 support, i.e. every fine window covering those pixels (the tile's
*footprint*). The tiles fall into three strata:

- **known**: every footprint window was swept (coarse or refined): the maps agree there,
  local SSIM is 1 and the difference 0, at no cost;
- **targeted**: the ``targeted`` unknown tiles (supports apart) whose windows were
  interpolated across the widest spread of coarse scores; swept in full, so their part
  is exact;
- **sampled**: ``draws`` tiles drawn with replacement from the remaining unknown ones,
  with probability p_i proportional to the same risk mixed with a uniform share
  (defensive importance sampling, Hesterberg 1995: p_i >= share / N, so no tile is
  neglected). The Hansen-Hurwitz estimator sum_i d_i / p_i / n of the stratum's total
  SSIM deficit d = sum (1 - local SSIM) is unbiased whatever the risk's quality; its
  standard error comes from the draws' spread, and the interval is Student-t 95%.

SSIM = 1 - (targeted + sampled deficit) / (Hv * Wv). The windows swept for the check are
*not* put into the returned map: that would make the sampled tiles exact and bias the
estimate. ``max_abs_diff`` is the largest difference seen on the swept tiles' pixels: a
lower bound of the true maximum, aimed at the riskiest tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ...grid import DEFAULT_DRAWS, DEFAULT_TARGETED, DEFAULT_TILE, grid_shape
from ..geometry import windows_to_pixels
from .ssim import MARGIN, SIDE, data_range, ssim_map

DEFAULT_UNIFORM_SHARE = 0.5
METHOD = ("tiles of the SSIM map: known tiles exact, the riskiest swept, the rest estimated "
          "from tiles drawn by risk (Hansen-Hurwitz); Gaussian 11x11 SSIM, sigma 1.5, "
          "data range 2 max|map|")
# two-sided 95% Student-t quantiles for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

Span = tuple[int, int]


def t95(df: int) -> float:
    return _T95[df - 1] if df <= len(_T95) else 1.96


def _axis(n_pix: int, window: int, stride: int, tile: int, n_win: int
          ) -> tuple[list[Span], list[Span]]:
    """Tiles along one axis: SSIM-map spans [a, b) and the spans [lo, hi] of the windows
    covering their support pixels [a, b + 10)."""
    spans, wins = [], []
    for a in range(0, n_pix - 2 * MARGIN, tile):
        b = min(a + tile, n_pix - 2 * MARGIN)
        y0, y1 = a, b + SIDE - 1
        spans.append((a, b))
        wins.append((max(0, -(-(y0 - window + 1) // stride)), min(n_win - 1, (y1 - 1) // stride)))
    return spans, wins


def estimate_error(
    score_fn: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor,
    computed: torch.Tensor, spread: torch.Tensor, height: int, width: int, window: int,
    stride: int, *, seed: int = 0, tile: int = DEFAULT_TILE, draws: int = DEFAULT_DRAWS,
    targeted: int = DEFAULT_TARGETED, uniform_share: float = DEFAULT_UNIFORM_SHARE,
) -> tuple[dict[str, Any], int]:
    """The error document of a drill-down's ``scores`` (n_w, T), and the windows swept.

    ``computed`` (n_w,) marks exact windows; ``spread`` (n_w,) is the risk guide.
    """
    gh, gw = grid_shape(height, width, window, stride)
    rspan, rwin = _axis(height, window, stride, tile, gh)
    cspan, cwin = _axis(width, window, stride, tile, gw)
    integ = torch.zeros(gh + 1, gw + 1, dtype=torch.float64)
    integ[1:, 1:] = (~computed).reshape(gh, gw).double().cumsum(0).cumsum(1)  # summed-area
    risk_pix, _ = windows_to_pixels(spread[:, None], height, width, window, stride)  # (1,H,W)
    # a tile's risk: the largest pixel risk on its support [a, b + 10) x [c, d + 10)
    side = (min(tile + SIDE - 1, height), min(tile + SIDE - 1, width))
    risk_tile = F.max_pool2d(risk_pix[None], side, stride=tile, ceil_mode=True)[0, 0]
    assert risk_tile.shape == (len(rspan), len(cspan)), "one risk per tile"
    lo_r, hi_r = (torch.tensor([w[e] for w in rwin]) for e in (0, 1))  # (n_tr,) window spans
    lo_c, hi_c = (torch.tensor([w[e] for w in cwin]) for e in (0, 1))  # (n_tc,)
    missing = (integ[hi_r[:, None] + 1, hi_c[None, :] + 1] - integ[lo_r[:, None], hi_c[None, :] + 1]
               - integ[hi_r[:, None] + 1, lo_c[None, :]] + integ[lo_r[:, None], lo_c[None, :]])
    unknown_ids = (missing.reshape(-1) > 0).nonzero()[:, 0]  # (n_u,) raster order
    order = torch.argsort(-risk_tile.reshape(-1)[unknown_ids], stable=True)  # riskiest first
    nc_t = len(cspan)
    unknown = [(int(t) // nc_t, int(t) % nc_t) for t in unknown_ids[order]]
    top = _spaced(unknown, targeted, rspan, cspan)
    chosen = set(top)
    rest = [t for t in unknown if t not in chosen]  # riskiest first
    risk_rest = torch.tensor([float(risk_tile[t]) for t in rest], dtype=torch.float64)
    p = _draw_probabilities(risk_rest, uniform_share)
    gen = torch.Generator().manual_seed(seed * 7919 + 104729)
    drawn = torch.multinomial(p, draws, replacement=True, generator=gen) \
        if len(rest) and draws > 0 else torch.zeros(0, dtype=torch.long)  # (n,) with replacement
    need = torch.zeros(gh, gw, dtype=torch.bool)
    for i, j in top + [rest[d] for d in drawn.tolist()]:
        (r0, r1), (c0, c1) = rwin[i], cwin[j]
        need[r0 : r1 + 1, c0 : c1 + 1] = True
    ids = (need.reshape(-1) & ~computed).nonzero()[:, 0]  # (n_c,) sorted, each swept once
    probe = scores.clone()
    if len(ids):
        probe[ids] = score_fn(ids).double()
    approx, _ = windows_to_pixels(scores, height, width, window, stride)  # (T, H, W)
    exact, _ = windows_to_pixels(probe, height, width, window, stride)  # exact on the tiles
    q = ssim_map(approx, exact, data_range(approx))  # (T, Hv, Wv)
    doc = _summarise(q, approx, exact, rspan, cspan, top, rest, drawn, p)
    n_tiles = len(rspan) * len(cspan)
    doc["tiles"].update(total=n_tiles, known=n_tiles - len(unknown), side=tile)
    doc.update(sample_windows=len(ids), method=METHOD)
    return doc, len(ids)


def _spaced(ranked: list[Span], n: int, rspan: list[Span], cspan: list[Span]) -> list[Span]:
    """The first ``n`` tiles of ``ranked`` whose supports do not overlap (spread out), then
    the next ranked ones if fewer than ``n`` are apart."""
    out: list[Span] = []
    for t in ranked:
        if len(out) == n:
            return out
        (a, b), (c, d) = rspan[t[0]], cspan[t[1]]
        if all(a >= rspan[u[0]][1] + SIDE - 1 or rspan[u[0]][0] >= b + SIDE - 1
               or c >= cspan[u[1]][1] + SIDE - 1 or cspan[u[1]][0] >= d + SIDE - 1
               for u in out):
            out.append(t)
    taken = set(out)
    return out + [t for t in ranked if t not in taken][: n - len(out)]


def _draw_probabilities(risk: torch.Tensor, uniform_share: float) -> torch.Tensor:
    """(N,) p_i = (1 - share) risk_i / sum(risk) + share / N; uniform without risk."""
    N = len(risk)
    if N == 0 or float(risk.sum()) <= 0:
        return torch.full((N,), 1.0 / max(N, 1), dtype=torch.float64)
    return (1 - uniform_share) * risk / risk.sum() + uniform_share / N


def _summarise(q: torch.Tensor, approx: torch.Tensor, exact: torch.Tensor,
               rspan: list[Span], cspan: list[Span], top: list[Span], rest: list[Span],
               drawn: torch.Tensor, p: torch.Tensor) -> dict[str, Any]:
    """SSIM estimate with a 95% interval and the observed max |difference|, per target."""
    T, Hv, Wv = q.shape
    seen = torch.zeros(approx.shape[1:], dtype=torch.bool)  # pixels exact in ``exact``

    def deficit(t: Span) -> torch.Tensor:
        (a, b), (c, d) = rspan[t[0]], cspan[t[1]]
        seen[a : b + SIDE - 1, c : d + SIDE - 1] = True
        return (1 - q[:, a:b, c:d]).sum((1, 2))  # (T,) summed over the tile's pixels

    total = sum((deficit(t) for t in top), torch.zeros(T, dtype=torch.float64))
    half = torch.zeros(T, dtype=torch.float64)
    n = len(drawn)
    if n:
        # Hansen-Hurwitz: each draw d_i / p_i is an unbiased estimate of the stratum total
        hh = torch.stack([deficit(rest[i]) / p[i] for i in drawn.tolist()])  # (n, T)
        total = total + hh.mean(0)
        se = hh.std(0) / n**0.5 if n > 1 else torch.full((T,), float("inf"))
        half = t95(max(n - 1, 1)) * se / (Hv * Wv)
    est = (1 - total / (Hv * Wv)).clamp(-1, 1)  # (T,)
    diff = (approx - exact).abs()[:, seen].amax(1) if seen.any() else torch.zeros(T)
    per = [{"ssim": float(e), "ssim_ci95": [float(max(e - h, -1)), float(min(e + h, 1))],
            "max_abs_diff": float(d)} for e, h, d in zip(est, half, diff, strict=True)]
    worst = int(torch.argmin(est))
    return {
        "ssim": per[worst]["ssim"], "ssim_ci95": per[worst]["ssim_ci95"],
        "max_abs_diff": float(diff.max()) if T else 0.0,
        "tiles": {"targeted": len(top), "drawn": n, "distinct_drawn": len(set(drawn.tolist())),
                  "sampled_stratum": len(rest)},
        "per_target": per,
    }
