"""The conditional sampler against the analytic conditional of a known Gaussian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda.engine.geometry import window_positions
from pda.engine.samplers import ConditionalSampler, make_sampler
from pda.engine.stats import SamplerStats, fit_gaussian
from tests.support.toys import random_stats


def _known_gaussian(l_: int, var: float = 0.01, length: float = 2.0):
    """A stationary Gaussian: mean 0.5, covariance var * exp(-d / length) per channel."""
    yy, xx = np.mgrid[0:l_, 0:l_]
    pts = np.stack([yy.ravel(), xx.ravel()], 1)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    cov = var * np.exp(-d / length)
    scale = np.array([1.0, 0.8, 1.2])[:, None, None]  # channels differ
    return np.full((3, l_ * l_), 0.5), cov[None] * scale


def _analytic(mu, cov, obs, inner, x_o):
    S_oo, S_io = cov[np.ix_(obs, obs)], cov[np.ix_(inner, obs)]
    K = S_io @ np.linalg.inv(S_oo)
    return mu[inner] + K @ (x_o - mu[obs]), cov[np.ix_(inner, inner)] - K @ S_io.T


@pytest.mark.parametrize("corner", [(6, 7), (0, 0)])  # interior window; clipped ring
def test_conditional_samples_match_the_analytic_conditional(corner):
    k, p, size = 3, 2, 16
    l_ = k + 2 * p
    stats = random_stats()
    mu, cov = _known_gaussian(l_)
    stats.set_gaussian(l_, mu, cov)
    x = torch.from_numpy(np.random.default_rng(5).uniform(0.35, 0.65, (3, size, size))).float()
    pos = window_positions(size, size, k, 1)
    sampler = ConditionalSampler(x, k, p, pos, stats)
    wid = int(((pos[:, 0] == corner[0]) & (pos[:, 1] == corner[1])).nonzero())

    # which l x l patch cells lie inside the image, and their pixel values
    r0, c0 = corner[0] - p, corner[1] - p
    grid = np.arange(l_ * l_).reshape(l_, l_)
    inner = grid[p : p + k, p : p + k].ravel()
    obs = [int(grid[a, b]) for a in range(l_) for b in range(l_)
           if not (p <= a < p + k and p <= b < p + k)
           and 0 <= r0 + a < size and 0 <= c0 + b < size]
    S = 40_000
    draws = sampler.sample(torch.tensor([wid]), S, torch.Generator().manual_seed(0))
    draws = draws[0].reshape(S, 3, k * k).double().numpy()  # (S, C, k*k)
    for ch in range(3):
        x_o = np.array([float(x[ch, r0 + o // l_, c0 + o % l_]) for o in obs])
        m, c = _analytic(mu[ch], cov[ch], obs, inner, x_o)
        # the deterministic part is exact
        got_mean = sampler.conditional_mean(torch.tensor([wid]))[0, ch].double().numpy()
        np.testing.assert_allclose(got_mean, m, atol=2e-4)
        # and the samples have that mean and covariance (standard error ~ 1e-3 here)
        np.testing.assert_allclose(draws[:, ch].mean(0), m, atol=3e-3)
        np.testing.assert_allclose(np.cov(draws[:, ch].T), c, atol=1.5e-3)
    # conditioning matters: the interior window's mean is not the unconditional 0.5
    assert np.abs(got_mean - 0.5).max() > 0.02


def test_geometries_are_factorised_once_not_per_window():
    k, p, size = 4, 2, 32
    stats = random_stats()
    x = torch.rand(3, size, size)
    pos = window_positions(size, size, k, 1)
    sampler = ConditionalSampler(x, k, p, pos, stats)
    # 29 x 29 windows, but only (p+1)^2 clip patterns per axis pair: 3 x 3 x 3 x 3 at most
    assert len(pos) == 841
    assert len(sampler._factors) <= 81
    assert len(sampler._factors) == 25  # top/bottom and left/right clips never overlap here


def test_conditional_samples_stay_in_the_pixel_range():
    stats = random_stats()
    x = torch.rand(3, 16, 16)
    pos = window_positions(16, 16, 4, 2)
    s = make_sampler("conditional", x, 4, pos, stats, padding=2)
    out = s.sample(torch.arange(len(pos)), 4, torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1


def test_fit_gaussian_recovers_the_pixel_statistics():
    rng = np.random.default_rng(0)
    imgs = (rng.random((4, 64, 64, 3)) * 255).astype(np.uint8)  # iid uniform pixels
    mu, cov = fit_gaussian(imgs, 3, n_patches=20_000)
    assert mu.shape == (3, 9) and cov.shape == (3, 9, 9)
    np.testing.assert_allclose(mu, 127.5 / 255, atol=0.01)
    np.testing.assert_allclose(np.diagonal(cov, axis1=1, axis2=2), 1 / 12, atol=0.005)
    off = cov[0] - np.diag(np.diag(cov[0]))
    assert np.abs(off).max() < 0.005


def test_stats_round_trip_through_a_file(tmp_path):
    stats = random_stats()
    stats.save(tmp_path / "s.npz", patch_sizes=[5])
    back = SamplerStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.images, stats.images)
    np.testing.assert_allclose(back.gaussian(5)[1], stats.gaussian(5)[1], atol=1e-6)
