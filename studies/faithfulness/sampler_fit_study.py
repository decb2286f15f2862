"""How good is the conditional sampler's Gaussian, and what does clipping do to its samples?
(notebook.md, "Hypotheses: the Gaussian fit and clipping"; issue 21.)

No classifier is involved: on every evaluation photo (pda/data/evaluation, none in the
fitting set) it takes random interior windows of the default geometry (k = 32 inside a
2 px ring, l = 36), predicts the hidden 32 x 32 x 3 pixels from the ring, and scores the
prediction against the truth, per photo, for several fits of the per-channel Gaussian:

- ``shipped``: the built-in fit (8 reference photos, 20,000 patches);
- ``half``: the same recipe on 4 of the 8 photos (the trend says what more data would do);
- ``shrink10`` / ``shrink30``: the shipped covariance shrunk toward its diagonal by 10 / 30 %;
- ``rank64``: probabilistic PCA, the top 64 eigenvectors plus isotropic noise;
- ``own``: a fit on 10,000 patches of the photo itself (an optimistic bound: the
  windows scored are among the patches fitted).

Scores per photo (lower is better unless said): the conditional mean's MSE, against
the ring's mean colour as a fill (``ring_mse``); the Gaussian's negative log-likelihood
of the true patch per value (nats); the share of true values inside the conditional
95 % interval (should be 0.95). For clipping, four samples per window from the shipped
fit: the share of values outside [0, 1], the mean |clipped - unclipped|, and each
sample's MSE to the truth with and without clipping. Means with 95 % bootstrap
intervals over the photos; differences paired per photo against ``shipped``.

    python studies/faithfulness/sampler_fit_study.py [--windows 64] \
        [--out studies/faithfulness/results/faithfulness-sampler-fit.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pda.engine.samplers import ConditionalSampler
from pda.engine.stats import DEFAULT_STATS_PATH, SamplerStats, fit_gaussian, load_reference_images
from pda.tools.evaluate import EVAL_DIR

K, P = 32, 2
L = K + 2 * P
JITTER = ConditionalSampler.JITTER  # the same regularisation as the sampler's


def conditional(mu: np.ndarray, cov: np.ndarray):
    """Per channel (A, b, chol, logdet) of p(inner | ring) for the interior geometry."""
    grid = np.arange(L * L).reshape(L, L)
    inner = np.zeros((L, L), bool)
    inner[P:P + K, P:P + K] = True
    o, i = grid[~inner], grid[inner]
    out = []
    for ch in range(3):
        S = cov[ch]
        S_oo = S[np.ix_(o, o)] + JITTER * np.eye(len(o))
        A = np.linalg.solve(S_oo, S[np.ix_(o, i)]).T
        cond = S[np.ix_(i, i)] - A @ S[np.ix_(o, i)]
        cond = (cond + cond.T) / 2 + JITTER * np.eye(len(i))
        chol = np.linalg.cholesky(cond)
        b = mu[ch, i] - A @ mu[ch, o]
        out.append((A, b, chol, 2 * np.log(np.diag(chol)).sum()))
    return o, i, out


def shrink(cov: np.ndarray, alpha: float) -> np.ndarray:
    diag = np.eye(cov.shape[1]) * np.diagonal(cov, axis1=1, axis2=2)[:, None, :]
    return (1 - alpha) * cov + alpha * diag


def low_rank(cov: np.ndarray, rank: int) -> np.ndarray:
    out = np.empty_like(cov)
    for ch in range(3):
        w, v = np.linalg.eigh(cov[ch])
        w, v = w[::-1], v[:, ::-1]
        noise = w[rank:].mean()
        out[ch] = (v[:, :rank] * (w[:rank] - noise)) @ v[:, :rank].T + noise * np.eye(len(w))
    return out


def score(model, patches: np.ndarray, rng: np.random.Generator, clip_study: bool) -> dict:
    """patches: (N, 3, L*L) in [0, 1]."""
    o, i, per_ch = model
    n_i = len(i)
    mse = nll = inside = ring = 0.0
    clip = {"outside": 0.0, "shift": 0.0, "mse_clipped": 0.0, "mse_raw": 0.0}
    for ch, (A, b, chol, logdet) in enumerate(per_ch):
        x_o, x_i = patches[:, ch, o], patches[:, ch, i]  # (N, n_o), (N, n_i)
        mean = x_o @ A.T + b  # (N, n_i)
        err = x_i - mean
        mse += (err ** 2).mean() / 3
        ring += ((x_i - x_o.mean(axis=1, keepdims=True)) ** 2).mean() / 3
        # Mahalanobis via the Cholesky factor: solve L y = err
        y = np.linalg.solve(chol, err.T)  # (n_i, N)
        per_pixel = 0.5 * (y ** 2).sum(0) + 0.5 * logdet + 0.5 * n_i * np.log(2 * np.pi)
        nll += per_pixel.mean() / n_i / 3
        sd = np.sqrt((chol ** 2).sum(axis=1))  # (n_i,) marginal conditional sd
        inside += (np.abs(err) <= 1.96 * sd).mean() / 3
        if clip_study:
            z = rng.standard_normal((4, len(x_i), n_i))
            raw = mean[None] + z @ chol.T  # (4, N, n_i)
            clipped = raw.clip(0, 1)
            clip["outside"] += ((raw < 0) | (raw > 1)).mean() / 3
            clip["shift"] += np.abs(clipped - raw).mean() / 3
            clip["mse_clipped"] += ((clipped - x_i[None]) ** 2).mean() / 3
            clip["mse_raw"] += ((raw - x_i[None]) ** 2).mean() / 3
    out = {"mse": mse, "ring_mse": ring, "nll": nll, "inside95": inside}
    if clip_study:
        out.update(clip)
    return out


def patches_of(image: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    H, W, _ = image.shape
    r = rng.integers(0, H - L + 1, n)
    c = rng.integers(0, W - L + 1, n)
    offs = np.arange(L)
    p = image[(r[:, None] + offs)[:, :, None], (c[:, None] + offs)[:, None, :]]  # (n, L, L, 3)
    return p.astype(np.float64).transpose(0, 3, 1, 2).reshape(n, 3, L * L) / 255.0


def boot(values: np.ndarray, rng: np.random.Generator, n: int = 2000) -> list[float]:
    idx = rng.integers(0, len(values), (n, len(values)))
    means = values[idx].mean(axis=1)
    low, high = np.quantile(means, 0.025), np.quantile(means, 0.975)
    return [float(values.mean()), float(low), float(high)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=64, help="windows scored per photo")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    stats = SamplerStats.load(DEFAULT_STATS_PATH)
    mu, cov = stats.gaussian(L)
    half_mu, half_cov = fit_gaussian(stats.images[::2], L)
    fits = {
        "shipped": (mu, cov),
        "half": (half_mu, half_cov),
        "shrink10": (mu, shrink(cov, 0.1)),
        "shrink30": (mu, shrink(cov, 0.3)),
        "rank64": (mu, low_rank(cov, 64)),
    }
    models = {name: conditional(*f) for name, f in fits.items()}
    photos = load_reference_images(EVAL_DIR)
    rng = np.random.default_rng(0)
    rows = []
    for n, image in enumerate(photos):
        patches = patches_of(image, args.windows, rng)
        row = {name: score(m, patches, rng, name == "shipped") for name, m in models.items()}
        own = fit_gaussian(image[None], L, n_patches=10_000, seed=n + 1)
        row["own"] = score(conditional(*own), patches, rng, False)
        rows.append(row)
        print(f"photo {n + 1}/{len(photos)}  shipped mse {row['shipped']['mse']:.4f}  "
              f"elapsed {time.time() - t0:.0f}s", flush=True)
    brng = np.random.default_rng(1)
    names = list(rows[0])
    summary: dict = {}
    for name in names:
        summary[name] = {}
        for metric in rows[0][name]:
            vals = np.array([r[name][metric] for r in rows])
            summary[name][metric] = boot(vals, brng)
            if name != "shipped" and metric in rows[0]["shipped"]:
                diff = vals - np.array([r["shipped"][metric] for r in rows])
                summary[name][metric + "_minus_shipped"] = boot(diff, brng)
    clip = np.array([r["shipped"]["mse_clipped"] - r["shipped"]["mse_raw"] for r in rows])
    summary["shipped"]["mse_clipped_minus_raw"] = boot(clip, brng)
    result = {"photos": len(rows), "windows_per_photo": args.windows, "window": K,
              "padding": P, "seconds": round(time.time() - t0, 1), "summary": summary,
              "command": "python studies/faithfulness/sampler_fit_study.py"
                         + (f" --windows {args.windows}" if args.windows != 64 else "")}
    for name in names:
        print(name, {m: [round(v, 4) for v in s] for m, s in summary[name].items()})
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
