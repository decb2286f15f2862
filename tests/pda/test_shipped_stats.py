"""The built-in sampler statistics ship the Gaussian fits of the default window and of every
preset, so no request with them fits one (a 36 px fit took 6.8 s quiet, 33 s loaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda.defaults import PRESETS
from pda.engine import stats as stats_module
from pda.engine.geometry import window_positions
from pda.engine.samplers import make_sampler
from pda.engine.stats import DEFAULT_PATCH_SIZES, DEFAULT_STATS_PATH, SamplerStats
from pda.params import ExplainParams, with_preset


@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_the_default_window_and_every_preset_never_fit_at_request_time(preset, monkeypatch):
    def no_fit(*_a, **_k):
        raise AssertionError("a Gaussian was fitted at request time")

    monkeypatch.setattr(stats_module, "fit_gaussian", no_fit)
    stats = SamplerStats.load(DEFAULT_STATS_PATH)  # fresh: nothing cached by other tests
    params = ExplainParams(**with_preset({}, preset))
    side = params.window + 2 * params.padding
    assert side in DEFAULT_PATCH_SIZES
    x = torch.rand(3, 64, 64)
    positions = window_positions(64, 64, params.window, 16)
    sampler = make_sampler(params.sampler, x, params.window, positions, stats,
                           padding=params.padding)
    mu, cov = stats.gaussian(side)
    n = side * side
    assert mu.shape == (3, n) and cov.shape == (3, n, n)
    assert np.array_equal(cov, cov.transpose(0, 2, 1))  # the packed triangle, mirrored
    assert sampler is not None


def test_the_shipped_sizes_follow_the_defaults():
    # 32 + 2 x 2 for the default window, 10 + 2 x 2 for the paper's
    assert DEFAULT_PATCH_SIZES == (14, 36)


def test_a_packed_file_reads_back_the_fit_it_saved(tmp_path):
    rng = np.random.default_rng(0)
    stats = SamplerStats(rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    stats.save(tmp_path / "s.npz", patch_sizes=[3])
    back = SamplerStats.load(tmp_path / "s.npz")
    mu, cov = stats.gaussian(3)
    np.testing.assert_allclose(back.gaussian(3)[1], cov, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(back.gaussian(3)[0], mu, rtol=1e-6)
