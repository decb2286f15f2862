"""The grid arithmetic's one home (pda.grid): torch-free, and what the engine sweeps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pda.engine.geometry import window_positions
from pda.engine.samplers import ConstantSampler
from pda.errors import InvalidParameterError
from pda.grid import check_window, count_windows, grid_shape, passes_per_window


@pytest.mark.parametrize("hw,k,s", [((224, 224), 32, 8), ((224, 224), 16, 16), ((227, 200), 11, 4),
                                    ((5, 9), 5, 1), ((64, 64), 1, 3)])
def test_counts_are_the_windows_the_engine_places(hw, k, s):
    H, W = hw
    positions = window_positions(H, W, k, s)
    assert count_windows(H, W, k, s) == positions.shape[0]
    gh, gw = grid_shape(H, W, k, s)
    assert positions[:, 0].unique().numel() == gh and positions[:, 1].unique().numel() == gw
    assert int(positions.max()) + k <= max(H, W)


def test_a_window_that_does_not_fit():
    assert count_windows(10, 20, 11, 1) == 0 and grid_shape(10, 20, 11, 1) == (0, 0)
    with pytest.raises(InvalidParameterError, match="exceeds the image size 10x20"):
        check_window(10, 20, 11, 1)
    with pytest.raises(InvalidParameterError, match="stride must be at least 1"):
        check_window(10, 20, 3, 0)


def test_passes_by_sampler_name_and_object_agree():
    import torch

    sampler = ConstantSampler(torch.zeros(3, 8, 8), 4, torch.zeros(3))
    assert passes_per_window("constant", 4) == passes_per_window(sampler, 4) == 1
    assert passes_per_window("conditional", 4) == 4 and passes_per_window("marginal", 7) == 7


def test_the_grid_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, pda.grid, pda.jobs.chunks, pda.params;"
                          "print('torch' in sys.modules)"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
