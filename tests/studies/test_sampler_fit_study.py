"""studies/faithfulness/sampler_fit_study.py scores a Gaussian's predictions as it must: on
patches drawn from the model's own distribution the 95 % interval holds 95 % of the values, the
conditional mean's MSE is the conditional variance, and the NLL is the closed form."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).parents[2] / "studies" / "faithfulness" / "sampler_fit_study.py"
spec = importlib.util.spec_from_file_location("sampler_fit_study", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def _toy_gaussian():
    d = study.L * study.L
    # a smooth, well-conditioned covariance: exponential decay with pixel distance
    yy, xx = np.divmod(np.arange(d), study.L)
    dist = np.hypot(yy[:, None] - yy[None], xx[:, None] - xx[None])
    cov = np.stack([0.01 * np.exp(-dist / s) + 1e-4 * np.eye(d) for s in (2.0, 3.0, 4.0)])
    mu = np.full((3, d), 0.5)
    return mu, cov


def test_scores_on_the_models_own_samples():
    rng = np.random.default_rng(0)
    mu, cov = _toy_gaussian()
    model = study.conditional(mu, cov)
    chols = [np.linalg.cholesky(c) for c in cov]
    n = 200
    patches = np.stack([mu[ch] + rng.standard_normal((n, mu.shape[1])) @ chols[ch].T
                        for ch in range(3)], axis=1)  # (n, 3, L*L)
    s = study.score(model, patches, rng, clip_study=True)
    assert abs(s["inside95"] - 0.95) < 0.01
    # MSE of the conditional mean = mean conditional variance (trace / n_i)
    _, i, per_ch = model
    cond_var = np.mean([(c ** 2).sum() / len(i) for _, _, c, _ in per_ch])
    assert abs(s["mse"] - cond_var) / cond_var < 0.05
    # NLL per value: 0.5 (1 + log 2 pi) + logdet / (2 n_i) on average
    expect = np.mean([0.5 * (1 + np.log(2 * np.pi)) + ld / (2 * len(i)) for *_, ld in per_ch])
    assert abs(s["nll"] - expect) < 0.02
    # the ring-mean fill knows nothing of the correlations: worse than the conditional mean
    assert s["ring_mse"] > s["mse"]
    # values near 0.5 with sd ~0.1 are rarely outside [0, 1]; clipping moves little
    assert s["outside"] < 1e-3 and s["shift"] < 1e-4


def test_shrink_and_low_rank_keep_the_variances():
    _, cov = _toy_gaussian()
    s = study.shrink(cov, 0.3)
    assert np.allclose(np.diagonal(s, axis1=1, axis2=2), np.diagonal(cov, axis1=1, axis2=2))
    off = ~np.eye(cov.shape[1], dtype=bool)
    assert np.allclose(s[:, off], 0.7 * cov[:, off])
    r = study.low_rank(cov, 64)
    assert np.allclose(np.trace(r, axis1=1, axis2=2), np.trace(cov, axis1=1, axis2=2))
    w = np.linalg.eigvalsh(r[0])
    assert np.isclose(w[: -64], w[0]).all()  # the discarded directions share one noise level
