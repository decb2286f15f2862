"""The stationary conditional sampler (pda.engine.stationary) against the analytic
conditional of its own Gaussian, and the choice between it and the stored dense fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda.engine import stats as stats_module
from pda.engine.geometry import window_positions
from pda.engine.samplers import ConditionalSampler, make_sampler
from pda.engine.stationary import StationarySampler, _model
from pda.engine.stats import SamplerStats, autocovariance
from tests.support.toys import random_stats


def quiet_stats(seed: int = 0) -> SamplerStats:
    """Blocky noise in [0.35, 0.65]: correlated pixels whose samples clipping to [0, 1]
    never touches, so the draws' moments are the Gaussian's."""
    rng = np.random.default_rng(seed)
    noise = rng.random((8, 8, 8, 3)).repeat(4, axis=1).repeat(4, axis=2)  # (8, 32, 32, 3)
    return SamplerStats(((0.5 + 0.3 * (noise - 0.5)) * 255).astype(np.uint8))


def _analytic(cov: np.ndarray, mean: float, obs: list[int], inner: np.ndarray,
              x_o: np.ndarray, jitter: float = 1e-5):
    S_oo = cov[np.ix_(obs, obs)] + jitter * np.eye(len(obs))
    S_io = cov[np.ix_(inner, obs)]
    K = S_io @ np.linalg.inv(S_oo)
    return mean + K @ (x_o - mean), cov[np.ix_(inner, inner)] - K @ S_io.T


@pytest.mark.parametrize("corner", [(6, 7), (0, 0), (13, 5)])  # interior, corner, edges
def test_stationary_samples_match_the_analytic_conditional(corner):
    k, p, size = 3, 2, 16
    l_ = k + 2 * p
    stats = quiet_stats()
    x = torch.from_numpy(np.random.default_rng(5).uniform(0.35, 0.65, (3, size, size))).float()
    pos = window_positions(size, size, k, 1)
    sampler = make_sampler("conditional", x, k, pos, stats, padding=p)
    assert isinstance(sampler, StationarySampler)  # no stored fit for l = 7
    wid = int(((pos[:, 0] == corner[0]) & (pos[:, 1] == corner[1])).nonzero())
    model = _model(stats, l_)
    cov = model.covariance(np.arange(l_ * l_), np.arange(l_ * l_))  # (C, 49, 49)
    r0, c0 = corner[0] - p, corner[1] - p
    grid = np.arange(l_ * l_).reshape(l_, l_)
    inner = grid[p:p + k, p:p + k].ravel()
    obs = [int(grid[a, b]) for a in range(l_) for b in range(l_)
           if not (p <= a < p + k and p <= b < p + k)
           and 0 <= r0 + a < size and 0 <= c0 + b < size]
    S = 20_000
    draws = sampler.sample(torch.tensor([wid]), S, torch.Generator().manual_seed(0))
    draws = draws[0].reshape(S, 3, k * k).double().numpy()  # (S, C, k*k)
    got_mean = sampler.conditional_mean(torch.tensor([wid]))[0].double().numpy()
    for ch in range(3):
        x_o = np.array([float(x[ch, r0 + o // l_, c0 + o % l_]) for o in obs])
        m, c = _analytic(cov[ch], model.mean[ch], obs, inner, x_o)
        np.testing.assert_allclose(got_mean[ch], m, atol=1e-5)  # the deterministic part
        sd = np.sqrt(np.diag(c))
        # the samples' mean within 4 standard errors, their covariance within 4 % of its
        # largest entry (one standard error is 1 %)
        assert np.all(np.abs(draws[:, ch].mean(0) - m) < 4 * sd / np.sqrt(S))
        np.testing.assert_allclose(np.cov(draws[:, ch].T), c, atol=0.04 * np.abs(c).max())
        assert np.abs(m - model.mean[ch]).max() > 0.05  # the ring moved the mean


def test_one_call_over_windows_of_several_geometries_gives_each_its_own_conditional():
    k, size = 3, 16
    stats = quiet_stats()
    x = torch.from_numpy(np.random.default_rng(5).uniform(0.35, 0.65, (3, size, size))).float()
    sampler = make_sampler("conditional", x, k, window_positions(size, size, k, 1), stats)
    ids = torch.tensor([0, 5, 40, 77, 100, 168, 13])  # corners, edges, interior, mixed
    S = 2_000
    draws = sampler.sample(ids, S, torch.Generator().manual_seed(1)).double()
    mean = sampler.conditional_mean(ids).double()  # (7, C, k*k)
    spread = draws.std(1).reshape(len(ids), 3, k * k)
    err = (draws.mean(1).reshape(len(ids), 3, k * k) - mean).abs()
    assert (err < 4 * spread / S ** 0.5).all()
    # and the means differ between windows: each got its own ring, not a neighbour's
    assert (mean[0] - mean[3]).abs().max() > 0.05


def test_the_prior_draws_have_the_reference_images_autocovariance():
    stats = quiet_stats()
    l_ = 9
    x = torch.full((3, 32, 32), 0.5)
    sampler = make_sampler("conditional", x, 5, window_positions(32, 32, 5, 8), stats)
    z = sampler._draw(10_000, torch.Generator().manual_seed(2)).double()  # (n, C, l*l)
    emp = torch.einsum("nca,ncb->cab", z, z).numpy() / len(z)  # (C, 81, 81)
    want = _model(stats, l_).covariance(np.arange(l_ * l_), np.arange(l_ * l_))
    np.testing.assert_allclose(emp, want, atol=0.05 * want.max())
    # the model is the images' own: the biased autocovariance at offset 0 is the variance
    mean, acf = autocovariance(stats.images)
    pix = stats.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(acf[:, 31, 31], pix.var(axis=0), rtol=1e-9)
    np.testing.assert_allclose(mean, pix.mean(axis=0), rtol=1e-9)


def test_a_seed_repeats_the_samples_and_samples_stay_in_the_pixel_range():
    stats = random_stats()
    x = torch.rand(3, 40, 40)
    s = make_sampler("conditional", x, 12, window_positions(40, 40, 12, 4), stats, padding=3)
    ids = torch.arange(len(s.positions))
    a = s.sample(ids, 3, torch.Generator().manual_seed(7))
    b = s.sample(ids, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (len(ids), 3, 3, 12, 12)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, s.sample(ids, 3, torch.Generator().manual_seed(8)))


def test_a_stored_fit_is_used_where_there_is_one_and_no_dense_fit_is_made_otherwise(
        monkeypatch):
    def no_fit(*_a, **_k):
        raise AssertionError("a dense Gaussian was fitted at request time")

    monkeypatch.setattr(stats_module, "fit_gaussian", no_fit)
    stats = random_stats(seed=3)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 64, 64))
    stats.set_gaussian(8, np.full((3, 64), 0.5), a @ a.transpose(0, 2, 1) / 64)
    x = torch.rand(3, 32, 32)
    stored = make_sampler("conditional", x, 4, window_positions(32, 32, 4, 4), stats)
    other = make_sampler("conditional", x, 5, window_positions(32, 32, 5, 4), stats)
    assert isinstance(stored, ConditionalSampler) and isinstance(other, StationarySampler)
    assert stats.stored_sizes == (8,)
