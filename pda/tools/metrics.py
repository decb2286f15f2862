"""Field-standard faithfulness metrics of a relevance map, for ``pda evaluate``
(docs/faithfulness.md, "Metric families").

Shapes: C channels, H x W image, N = H * W pixels, T scored classes (columns of the
score function), P curve points, K correlation subsets.

- **Removal curves, MoRF and LeRF** (Samek et al. 2017 pixel flipping / region
  perturbation; Petsiuk et al. 2018 deletion; Rong et al. 2022 ROAD): remove pixels
  most-relevant-first (MoRF: the score should fall fast, low AUC) or least-relevant-first
  (LeRF: it should stay, high AUC), under a fill. Insertion of the most relevant pixels
  first shows at every point the same image as LeRF removal at the complementary
  fraction (whenever the fill depends on the mask only), so its AUC *is* the LeRF AUC;
  it is reported once, as LeRF. ``srg`` = LeRF - MoRF AUC (Blücher et al. 2024's
  symmetric relevance gain): one number, higher is better, less sensitive to the fill's
  own shock than either curve alone (the shock lowers both).
- **Faithfulness correlation** (Bhatt, Weller, Moura, IJCAI 2020): Pearson correlation,
  over K random subsets S, between the map's summed relevance on S and the score drop
  when S is removed.
- **Randomisation sanity check** (Adebayo et al., NeurIPS 2018): Spearman rank
  correlation (signed and of |map|) and SSIM between a map and the map of the same
  class after the classifier's last layer is re-initialised. A faithful map changes:
  low is good.
- **Pixel flipping** (Bach et al. 2015; Samek et al. 2017): the pixels most-relevant-
  first are set to a constant, **black** (0 in pixel space, before the model's own
  normalisation), in ``pf_step`` fractions; AUC of the score on x = fraction set to
  black (low is good). No random baseline and no LeRF end: the field's metric as the
  third-party libraries compute it.
- **Region perturbation** (Samek, Binder, Montavon, Lapuschkin, Müller, IEEE TNNLS 2017):
  the image is cut into ``region`` x ``region`` patches ranked by their summed relevance
  (descending, ties in raster order of the patches); the first L patches are set to black
  one at a time; AOPC = 1/(L+1) sum_{k=0..L} (f(x) - f(x_k)) (high is good).
- **Random logit** (Sixt, Granz, Landgraf, ICML 2020): the same similarities between the
  map of the top class and the map of a random other class (``pda.tools.evaluate``):
  a class-specific map differs; a mirror image (Spearman -1) is the top class's map
  again, in the other class's probability mass.

Fills (the ``Fill`` callables): ``blur``, ``grey`` and ``black`` (:mod:`.faithfulness`'s canvases:
the pixels show a fixed image) and ``road`` (:mod:`.road`, noisy linear imputation,
recomputed for every mask). Scores: whatever ``score`` returns, in the CLI the softmax
probability of the class.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..engine.drilldown.ssim import SIDE, ssim_map
from ..engine.faithfulness import auc, block_order, fill_canvas, relevance_order
from ..errors import InvalidParameterError
from .road import noisy_linear_impute

#: (B, C, H, W) pixel-space images -> (B, T) scores
Score = Callable[[torch.Tensor], torch.Tensor]
#: image (C, H, W), removed masks (B, H, W) bool -> the filled images (B, C, H, W)
Fill = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FILLS = ("blur", "road", "grey", "black")
#: the constant fill of pixel flipping and region perturbation: black, 0 in pixel space
BLACK = 0.0


def make_fill(name: str, x: torch.Tensor, seed: int = 0) -> Fill:
    """The fill ``name`` for image ``x``; ROAD's noise comes from a generator seeded by
    ``seed`` (one stream per fill, so a run is repeatable)."""
    if name == "road":
        gen = torch.Generator().manual_seed(seed * 1000 + 7)

        def road(img: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
            return noisy_linear_impute(img, removed, gen)
        return road
    if name not in FILLS:
        raise InvalidParameterError(f"unknown fill {name!r}; use {', '.join(FILLS)}")
    canvas = torch.full_like(x, BLACK) if name == "black" else fill_canvas(x, name)

    def fixed(img: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        return torch.where(removed[:, None], canvas[None], img[None])
    return fixed


def fractions(step: float) -> list[int]:
    """Curve points as per-mille of pixels removed: 0, step, ..., 1 (in thousandths, so
    point counts are exact integers of any image size)."""
    if not 0.0 < step <= 1.0:
        raise InvalidParameterError(f"metric step {step} must lie in (0, 1]")
    n = math.ceil(1.0 / step - 1e-9)
    return [min(1000, round(1000 * i * step)) for i in range(n)] + [1000]


def removal_curves(score: Score, x: torch.Tensor, orders: list[torch.Tensor],
                   fill: Fill, step: float, *, batch_size: int = 32,
                   progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Score after removing the first fraction of each order (N,) at every curve point:
    (len(orders), P, T) and the passes used. The first and last points (nothing and
    everything removed) are the same for every order: scored once."""
    C, H, W = x.shape
    N = H * W
    counts = [round(f * N / 1000) for f in fractions(step)]  # (P,) pixels removed
    ranks = []
    for order in orders:
        rank = torch.empty(N, dtype=torch.long)
        rank[order.cpu()] = torch.arange(N)
        ranks.append(rank.view(H, W))
    jobs = [(o, i) for o in range(len(orders)) for i in range(1, len(counts) - 1)]
    ends = fill(x, torch.stack([torch.zeros(H, W, dtype=torch.bool),
                                torch.ones(H, W, dtype=torch.bool)]).to(x.device))
    ends[0] = x
    with torch.no_grad():
        e = score(ends).float().cpu()  # (2, T)
    out = torch.empty(len(orders), len(counts), e.shape[1])
    out[:, 0], out[:, -1] = e[0], e[1]
    passes = 2
    if progress is not None:
        progress(2)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        masks = torch.stack([ranks[o] < counts[i] for o, i in chunk]).to(x.device)
        with torch.no_grad():
            s = score(fill(x, masks)).float().cpu()  # (B, T)
        for row, (o, i) in enumerate(chunk):
            out[o, i] = s[row]
        passes += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return out.numpy().astype(np.float64), passes


def curve_auc(curve: np.ndarray, step: float) -> float:
    """Trapezoid AUC of one curve (P,) on x = fraction removed."""
    return auc(curve, fractions(step))


def random_orders(H: int, W: int, orders: int, block: int, seed: int) -> list[torch.Tensor]:
    """The baseline's random block orders (the same generator seeds as the product's)."""
    return [block_order(H, W, block, np.random.default_rng([seed, r])) for r in range(orders)]


def removal_scores(base: np.ndarray, curves: np.ndarray, step: float) -> dict[str, float]:
    """AUCs of target 0 from :func:`removal_curves` on [MoRF, LeRF] ``curves`` and the
    random orders' ``base`` curves: MoRF, LeRF, their random means, gaps and SRG."""
    morf, lerf = curve_auc(curves[0, :, 0], step), curve_auc(curves[1, :, 0], step)
    rand = float(np.mean([curve_auc(b[:, 0], step) for b in base]))
    return {"morf": morf, "lerf": lerf, "random": rand, "morf_gap": morf - rand,
            "lerf_gap": lerf - rand, "srg": lerf - morf}


def morf_lerf_orders(relevance: torch.Tensor) -> list[torch.Tensor]:
    """Most-relevant-first and least-relevant-first pixel orders of an (H, W) map (ties in
    raster order both ways)."""
    return [relevance_order(relevance), relevance_order(-relevance)]


def pixel_flipping(score: Score, x: torch.Tensor, relevance: torch.Tensor, step: float, *,
                   batch_size: int = 32, progress: Callable[[int], None] | None = None
                   ) -> tuple[float, np.ndarray, int]:
    """Pixel flipping with a black fill: the (H, W) map's pixels most-relevant-first (ties
    in raster order) set to 0 in ``step`` fractions; the AUC of target 0 on x = fraction
    set to black, the curve (P,) and the passes used (P)."""
    curves, passes = removal_curves(score, x, [relevance_order(relevance)],
                                    make_fill("black", x), step, batch_size=batch_size,
                                    progress=progress)
    return curve_auc(curves[0, :, 0], step), curves[0, :, 0], passes


def region_order(relevance: torch.Tensor, region: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``region`` x ``region`` patches of an (H, W) map (edge patches may be smaller):
    (H, W) patch index of every pixel (raster order of the patches) and the patch indices
    by summed relevance, descending, ties in raster order."""
    H, W = relevance.shape
    if region < 1:
        raise InvalidParameterError(f"region side {region} must be at least 1")
    ph, pw = math.ceil(H / region), math.ceil(W / region)
    rows = torch.arange(H)[:, None] // region
    cols = torch.arange(W)[None, :] // region
    patch = rows * pw + cols  # (H, W)
    sums = torch.zeros(ph * pw, dtype=torch.float64).index_add_(
        0, patch.flatten(), relevance.detach().cpu().double().flatten())
    return patch, torch.sort(-sums, stable=True).indices


def region_perturbation(score: Score, x: torch.Tensor, relevance: torch.Tensor,
                        region: int, regions: int, *, batch_size: int = 32,
                        progress: Callable[[int], None] | None = None
                        ) -> tuple[float, np.ndarray, int]:
    """Samek et al. 2017's region perturbation, black fill: the first L = ``regions``
    patches (at most all of them) by summed relevance set to 0 one more at a time;
    AOPC = mean over k = 0..L of f(x) - f(x_k) for target 0 (f(x_0) = f(x): its term is
    0), the L + 1 differences and the passes used (L + 1)."""
    C, H, W = x.shape
    patch, order = region_order(relevance, region)
    L = min(regions, len(order))
    turn = torch.empty(len(order), dtype=torch.long)
    turn[order] = torch.arange(len(order))
    pix_turn = turn[patch]  # (H, W): when each pixel turns black
    fill = make_fill("black", x)
    with torch.no_grad():
        s0 = float(score(x[None]).float()[0, 0])
    if progress is not None:
        progress(1)
    drops = [0.0]
    for start in range(1, L + 1, batch_size):
        ks = torch.arange(start, min(L, start + batch_size - 1) + 1)
        masks = (pix_turn[None] < ks[:, None, None]).to(x.device)  # (B, H, W)
        with torch.no_grad():
            s = score(fill(x, masks)).float()[:, 0].cpu().numpy()
        drops.extend((s0 - s).tolist())
        if progress is not None:
            progress(len(ks))
    d = np.asarray(drops, dtype=np.float64)
    return float(d.mean()), d, L + 1


def correlation_subsets(H: int, W: int, subsets: int, fraction: float, block: int,
                        seed: int) -> torch.Tensor:
    """(K, H, W) bool: K random subsets, each ``fraction`` of the ``block`` x ``block``
    blocks (edge blocks may be smaller; block 1 = single pixels, as in Bhatt et al.)."""
    if not 0.0 < fraction < 1.0 or subsets < 2 or block < 1:
        raise InvalidParameterError("faithfulness correlation needs 0 < fraction < 1, "
                                    "at least 2 subsets and a block of at least 1 px")
    bh, bw = math.ceil(H / block), math.ceil(W / block)
    k = max(1, round(fraction * bh * bw))
    rng = np.random.default_rng([seed, 11])
    chosen = np.zeros((subsets, bh * bw), dtype=bool)
    for s in range(subsets):
        chosen[s, rng.choice(bh * bw, k, replace=False)] = True
    grid = torch.from_numpy(chosen).view(subsets, bh, bw)
    return grid.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :H, :W]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (no linear relation to see)."""
    a, b = np.asarray(a, np.float64) - np.mean(a), np.asarray(b, np.float64) - np.mean(b)
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, tied values sharing their average rank."""
    a = np.ravel(a)
    order = np.argsort(a, kind="stable")
    s = a[order]
    first = np.r_[True, s[1:] != s[:-1]]  # (n,) starts of runs of equal values
    run = np.cumsum(first) - 1  # run id of each sorted value
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(a)]
    ranks = np.empty(len(a))
    ranks[order] = ((starts + ends + 1) / 2)[run]  # mean of ranks start+1..end
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return pearson(rankdata(a), rankdata(b))


def faithfulness_correlation(score: Score, x: torch.Tensor, relevance: torch.Tensor,
                             fill: Fill, subsets: torch.Tensor, *, batch_size: int = 32,
                             progress: Callable[[int], None] | None = None
                             ) -> tuple[float, int]:
    """Pearson(sum of ``relevance`` (H, W) over each subset (K, H, W), score(x) - score(x
    with the subset removed)) for target 0, and the passes used (K + 1)."""
    with torch.no_grad():
        s0 = float(score(x[None]).float()[0, 0])
    if progress is not None:
        progress(1)
    drops = []
    for start in range(0, len(subsets), batch_size):
        masks = subsets[start:start + batch_size].to(x.device)
        with torch.no_grad():
            drops.append(s0 - score(fill(x, masks)).float()[:, 0].cpu().numpy())
        if progress is not None:
            progress(len(masks))
    sums = (subsets.double() * relevance.cpu().double()[None]).sum((1, 2)).numpy()
    return pearson(sums, np.concatenate(drops)), len(subsets) + 1


def randomisation_scores(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Similarity of map ``a`` (H, W) and the randomised model's map ``b``: Spearman
    (signed, and of |map| as Adebayo et al. also report) and SSIM of the two maps each
    min-max scaled to [0, 1] (data range 1; their normalisation: on raw signed maps a
    negated map would score high, as luminance and structure flip together; NaN on maps
    smaller than the SSIM window)."""
    a64, b64 = a.double().cpu(), b.double().cpu()
    if min(a.shape) < SIDE:
        s = float("nan")
    else:
        s = float(ssim_map(_unit(a64)[None], _unit(b64)[None], torch.ones(1,
                  dtype=torch.float64)).mean())
    return {"spearman": spearman(a64.numpy(), b64.numpy()),
            "spearman_abs": spearman(a64.abs().numpy(), b64.abs().numpy()), "ssim": s}


def _unit(m: torch.Tensor) -> torch.Tensor:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else torch.zeros_like(m)


def last_layer(module: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The classifier's last layer: the last submodule with a weight (the head)."""
    found = [(n, m) for n, m in module.named_modules()
             if isinstance(getattr(m, "weight", None), torch.Tensor) and n]
    if not found:
        raise InvalidParameterError("the model has no layer with weights to re-initialise")
    return found[-1]


def randomised_model(model: Any, seed: int = 0) -> Any:
    """A copy of the :class:`pda.models.registry.LoadedModel` whose last layer has fresh random
    weights (the layer's own ``reset_parameters`` under ``seed``); the original is not
    touched. Its name differs, so no converted graph of the original is reused."""
    module = copy.deepcopy(model.module)
    name, layer = last_layer(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
        else:  # a bare weight: He-normal, the common initialisation of a head
            torch.nn.init.kaiming_normal_(layer.weight)
    return dataclasses.replace(model, name=f"{model.name}+random-{name}", module=module)


def gradient_saliency(model: Any, x: torch.Tensor, target: int) -> torch.Tensor:
    """Simonyan et al. 2014's saliency: max over channels of |d p(target) / d pixel|,
    (H, W); one forward and one backward pass (eager torch: gradients)."""
    xi = x[None].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        p = torch.softmax(model.module(model.normalise(xi)).float(), 1)[0, target]
        (g,) = torch.autograd.grad(p, xi)
    return g[0].abs().amax(0).detach()


def random_map(H: int, W: int, cell: int, seed: int) -> torch.Tensor:
    """A random map, piecewise constant on ``cell`` x ``cell`` cells like a PDA map at
    that stride (uniform values; seeded)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(math.ceil(H / cell), math.ceil(W / cell), generator=g)
    return v.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:H, :W]


@dataclasses.dataclass
class Protocol:
    """What :class:`ImageScorer` measures (docs/faithfulness.md, "Metric families")."""

    fills: tuple[str, ...] = ("blur", "road")
    step: float = 0.1  # fraction of pixels per curve point (ROAD's 10 %)
    orders: int = 3  # random block orders of the removal baseline
    block: int = 16  # their block side
    subsets: int = 64  # faithfulness-correlation subsets K
    subset_fraction: float = 0.1  # of the blocks in each subset
    subset_block: int = 8  # block side of the subsets (the default stride's cell)
    pf_step: float = 0.05  # pixel flipping: fraction of pixels set to black per point
    region: int = 16  # region perturbation: patch side (14 x 14 patches at 224)
    regions: int = 100  # region perturbation: patches set to black, L
    seed: int = 0

    def removal_passes(self, with_baseline: bool) -> int:
        """Passes of one map's removal curves under all fills (+ the random baseline's)."""
        inner = len(fractions(self.step)) - 2
        base = 2 + inner * self.orders if with_baseline else 0
        return len(self.fills) * (2 + 2 * inner + base)

    def correlation_passes(self) -> int:
        return self.subsets + 1

    def pixel_flipping_passes(self) -> int:
        return len(fractions(self.pf_step))

    def region_passes(self, H: int, W: int) -> int:
        return min(self.regions, math.ceil(H / self.region) * math.ceil(W / self.region)) + 1


class ImageScorer:
    """The removal and correlation families for maps of one image and one class; the
    random baseline's curves do not depend on the map, so they are scored once per image
    and shared by every configuration. A fill with noise (ROAD) restarts its stream for
    every set of curves, so every map and the baseline see the same noise (common random
    numbers): a configuration's score does not depend on what was scored before it, and
    paired differences carry no fill noise of their own."""

    def __init__(self, score: Score, x: torch.Tensor, protocol: Protocol, *,
                 batch_size: int = 32, progress: Callable[[int], None] | None = None
                 ) -> None:
        self.score, self.x, self.p = score, x, protocol
        self.batch_size, self.progress = batch_size, progress
        for f in protocol.fills:  # an unknown fill fails here, before any pass
            make_fill(f, x, protocol.seed)
        self._base: dict[str, np.ndarray] = {}
        C, H, W = x.shape
        self.subsets = correlation_subsets(H, W, protocol.subsets, protocol.subset_fraction,
                                           protocol.subset_block, protocol.seed)

    def _fill(self, name: str) -> Fill:
        """The fill ``name``, its noise (if any) from the start of its seeded stream."""
        return make_fill(name, self.x, self.p.seed)

    def _curves(self, orders: list[torch.Tensor], fill: str) -> tuple[np.ndarray, int]:
        return removal_curves(self.score, self.x, orders, self._fill(fill), self.p.step,
                              batch_size=self.batch_size, progress=self.progress)

    def removal(self, relevance: torch.Tensor) -> tuple[dict[str, float], int]:
        """Per fill F: ``F_morf``, ``F_lerf``, ``F_random``, ``F_morf_gap``, ``F_lerf_gap``,
        ``F_srg`` for the (H, W) map; and the passes used (baseline included when new)."""
        C, H, W = self.x.shape
        out: dict[str, float] = {}
        passes = 0
        for f in self.p.fills:
            if f not in self._base:
                rnd = random_orders(H, W, self.p.orders, self.p.block, self.p.seed)
                self._base[f], used = self._curves(rnd, f)
                passes += used
            curves, used = self._curves(morf_lerf_orders(relevance), f)
            passes += used
            out.update({f"{f}_{k}": v for k, v in
                        removal_scores(self._base[f], curves, self.p.step).items()})
        return out, passes

    def pixel_flipping(self, relevance: torch.Tensor) -> tuple[float, int]:
        """Pixel flipping's AUC (black fill) and the passes used."""
        a, _, n = pixel_flipping(self.score, self.x, relevance, self.p.pf_step,
                                 batch_size=self.batch_size, progress=self.progress)
        return a, n

    def region_perturbation(self, relevance: torch.Tensor) -> tuple[float, int]:
        """Region perturbation's AOPC (black fill) and the passes used."""
        a, _, n = region_perturbation(self.score, self.x, relevance, self.p.region,
                                      self.p.regions, batch_size=self.batch_size,
                                      progress=self.progress)
        return a, n

    def correlation(self, relevance: torch.Tensor) -> tuple[float, int]:
        """Faithfulness correlation under the first fill, and the passes used."""
        return faithfulness_correlation(
            self.score, self.x, relevance, self._fill(self.p.fills[0]), self.subsets,
            batch_size=self.batch_size, progress=self.progress)
