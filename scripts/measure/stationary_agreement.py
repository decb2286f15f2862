"""How close is the stationary Gaussian (pda.engine.stationary) to the dense fit where both
run? (docs/algorithm.md §3, "Large windows"; docs/performance.md "Sampler set-up by
window".)

1. **Infill, no classifier** (as scripts/sampler_fit_study.py): on each evaluation photo,
   64 random interior windows of side k inside a 2 px ring; each model predicts the
   hidden k x k x 3 values from the ring; scored against the truth: the conditional
   mean's MSE, the negative log-likelihood per value (nats), the share of true values in
   the 95 % interval. Dense: the shipped fit (l = 36) or a fit made now with the shipped
   recipe (20,000 patches of the 8 reference photos); stationary: the reference photos'
   autocovariance. Means with 95 % bootstrap intervals over photos, differences paired.
2. **Maps through the classifier**: the default model on a few evaluation photos,
   window k, stride 16, 2 samples, seed 0, with the dense fit and with the stationary
   model; the maps' Pearson correlation, beside the correlation of the dense maps of two
   seeds (the sampling noise both share).

    python scripts/measure/stationary_agreement.py [--windows 32 56] [--photos 30] [--maps 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's pda, not an installed one

JITTER = 1e-5  # the samplers' regularisation


def conditional(mu: np.ndarray, cov: np.ndarray, k: int, p: int):
    """Per channel (A, b, chol, logdet) of p(inner | ring), interior geometry."""
    l_ = k + 2 * p
    grid = np.arange(l_ * l_).reshape(l_, l_)
    inner = np.zeros((l_, l_), bool)
    inner[p:p + k, p:p + k] = True
    o, i = grid[~inner], grid[inner]
    out = []
    for ch in range(3):
        S = cov[ch]
        A = np.linalg.solve(S[np.ix_(o, o)] + JITTER * np.eye(len(o)), S[np.ix_(o, i)]).T
        cond = S[np.ix_(i, i)] - A @ S[np.ix_(o, i)]
        chol = np.linalg.cholesky((cond + cond.T) / 2 + JITTER * np.eye(len(i)))
        out.append((A, mu[ch, i] - A @ mu[ch, o], chol, 2 * np.log(np.diag(chol)).sum()))
    return o, i, out


def score(model, patches: np.ndarray) -> dict[str, float]:
    """patches (n, 3, l*l) in [0, 1]."""
    o, i, per_ch = model
    mse = nll = inside = 0.0
    for ch, (A, b, chol, logdet) in enumerate(per_ch):
        err = patches[:, ch, i] - (patches[:, ch, o] @ A.T + b)  # (n, n_i)
        mse += (err ** 2).mean() / 3
        y = np.linalg.solve(chol, err.T)
        n_i = len(i)
        nll += (0.5 * (y ** 2).sum(0) + 0.5 * logdet
                + 0.5 * n_i * np.log(2 * np.pi)).mean() / n_i / 3
        sd = np.sqrt((chol ** 2).sum(axis=1))
        inside += (np.abs(err) <= 1.96 * sd).mean() / 3
    return {"mse": mse, "nll": nll, "inside95": inside}


def boot(values: np.ndarray, n: int = 2000) -> str:
    rng = np.random.default_rng(1)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    low, high = np.quantile(means, 0.025), np.quantile(means, 0.975)
    return f"{values.mean():+.4f} [{low:+.4f}, {high:+.4f}]"


def infill(k: int, p: int, photos: list[np.ndarray]) -> None:
    from pda.engine.stationary import StationaryModel
    from pda.engine.stats import SamplerStats, fit_gaussian, get_stats

    l_ = k + 2 * p
    stats = get_stats()
    t0 = time.time()
    dense = stats.gaussian(l_) if stats.has_gaussian(l_) else fit_gaussian(stats.images, l_)
    t_dense = time.time() - t0
    t0 = time.time()
    fresh = SamplerStats(stats.images, stats.mean)
    mean, acf = fresh.autocovariance()
    sm = StationaryModel(stats.images, mean, acf, l_)
    cells = np.arange(l_ * l_)
    stat = (np.repeat(mean[:, None], l_ * l_, 1), sm.covariance(cells, cells))
    t_stat = time.time() - t0
    models = {"dense": conditional(*dense, k, p), "stationary": conditional(*stat, k, p)}
    rng = np.random.default_rng(0)
    rows = []
    for image in photos:
        H, W, _ = image.shape
        r, c = rng.integers(0, H - l_ + 1, 64), rng.integers(0, W - l_ + 1, 64)
        offs = np.arange(l_)
        pt = image[(r[:, None] + offs)[:, :, None], (c[:, None] + offs)[:, None, :]]
        pt = pt.astype(np.float64).transpose(0, 3, 1, 2).reshape(64, 3, l_ * l_) / 255
        rows.append({name: score(m, pt) for name, m in models.items()})
    print(f"\n### window {k}, padding {p} (l = {l_}), {len(photos)} photos x 64 windows "
          f"(dense fit {t_dense:.1f} s, stationary {t_stat:.1f} s)\n")
    print("| score | dense | stationary | stationary - dense (95 % CI) |")
    print("|---|---|---|---|")
    for metric in ("mse", "nll", "inside95"):
        d = np.array([r["dense"][metric] for r in rows])
        s = np.array([r["stationary"][metric] for r in rows])
        print(f"| {metric} | {d.mean():.4f} | {s.mean():.4f} | {boot(s - d)} |", flush=True)


def maps(k: int, photos: list[Path]) -> None:
    import torch

    from pda.engine.explain import explain
    from pda.engine.inputs import preprocess
    from pda.engine.stats import SamplerStats, get_stats
    from pda.images import open_image
    from pda.models.registry import get_model
    from pda.params import ExplainParams
    from pda.runtime import Runtime

    torch.set_num_threads(2)
    model = get_model("efficientnet_lite0")
    shipped = get_stats()
    no_fits = SamplerStats(shipped.images, shipped.mean)  # the stationary model at any l
    runtime = Runtime(batch_size=16)
    print(f"\n### maps, window {k}, stride 16, 2 samples, top-1 class\n")
    print("| photo | r(dense, stationary) | r(dense seed 0, dense seed 1) |")
    print("|---|---|---|")
    rs = []
    for path in photos:
        x, _ = preprocess(open_image(path), model.input_size, "squash")
        base = dict(window=k, stride=16, samples=2, target="top1", faithfulness=False)
        dense = explain(model, x, ExplainParams(**base), shipped, runtime).relevance[0]
        stat = explain(model, x, ExplainParams(**base), no_fits, runtime).relevance[0]
        seed1 = explain(model, x, ExplainParams(**base, seed=1), shipped, runtime).relevance[0]
        r_ds = float(np.corrcoef(dense.ravel(), stat.ravel())[0, 1])
        r_seed = float(np.corrcoef(dense.ravel(), seed1.ravel())[0, 1])
        rs.append((r_ds, r_seed))
        print(f"| {path.name} | {r_ds:.3f} | {r_seed:.3f} |", flush=True)
    a = np.array(rs)
    print(f"| mean | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} |")


def main() -> None:
    from pda.engine.stats import load_reference_images
    from pda.tools.evaluate import EVAL_DIR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[32, 56])
    ap.add_argument("--padding", type=int, default=2)
    ap.add_argument("--photos", type=int, default=30, help="photos for the infill scores")
    ap.add_argument("--maps", type=int, default=4, help="photos for the maps (0: none)")
    a = ap.parse_args()
    t0 = time.time()
    photos = load_reference_images(EVAL_DIR)[: a.photos]
    for k in a.windows:
        infill(k, a.padding, list(photos))
    if a.maps:
        files = sorted(p for p in Path(EVAL_DIR).iterdir() if p.suffix == ".jpg")[: a.maps]
        maps(a.windows[0], files)
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
