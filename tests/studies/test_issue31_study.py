"""studies/faithfulness/issue31_study.py: the 4 % curves read off the 2 % ones are the 4 %
protocol's own points, and the summary's spreads are the mean absolute differences."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pda.grid import step_counts

SCRIPT = Path(__file__).parents[2] / "studies" / "faithfulness" / "issue31_study.py"
spec = importlib.util.spec_from_file_location("issue31_study", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_every_other_point_is_the_coarser_steps_curve():
    N = 224 * 224
    fine = step_counts(N, 0.02)
    vals = np.random.default_rng(0).random((5, 2, len(fine), 3))
    coarse_vals, coarse = study.every_other(vals, fine, N, 0.02)
    assert coarse == step_counts(N, 0.04) and len(coarse) == 26
    assert np.array_equal(coarse_vals[:, :, :-1], vals[:, :, 0:-1:2])  # 0, 2,008, ...
    assert np.array_equal(coarse_vals[:, :, -1], vals[:, :, -1])  # every pixel


def _photo(m0, m1, r0, r1, m04):
    """One target: map AUCs (deletion, insertion) at seeds 0, 1 and at step 0.04; the
    random orders' AUCs (4 at seed 0, 3 at seed 1)."""
    return {"s2_seed0_step0.02": {"maps": [m0], "random": [[r] for r in r0]},
            "s2_seed1_step0.02": {"maps": [m1], "random": [[r] for r in r1]},
            "s2_seed0_step0.04": {"maps": [m04], "random": [[r] for r in r0]},
            "agreement": {"a": [[0.9, 0.8]]}}


def test_the_summary_is_mean_absolute_differences_by_hand():
    r0 = [[0.2, 0.2], [0.4, 0.2], [0.3, 0.5], [0.5, 0.5]]  # 3-order mean (0.3, 0.3)
    r1 = [[0.1, 0.3], [0.3, 0.3], [0.2, 0.3]]  # (0.2, 0.3)
    s = study.summarise({
        "a": _photo([0.10, 0.50], [0.14, 0.47], r0, r1, [0.11, 0.50]),
        "b": _photo([0.20, 0.60], [0.18, 0.60], r0, r1, [0.20, 0.61])})
    assert s["seed"]["map"]["deletion"] == pytest.approx((0.04 + 0.02) / 2)
    assert s["seed"]["map"]["insertion"] == pytest.approx(0.03 / 2)
    assert s["seed"]["random"]["deletion"] == pytest.approx(0.1)  # 0.3 - 0.2 on both
    assert s["step0.04"]["map"]["deletion"] == pytest.approx(0.01 / 2)
    # one order: seed 0's first (0.2, 0.2) against seed 1's first (0.1, 0.3); the gaps
    # (0.10 - 0.2) - (0.14 - 0.1) = -0.14 and (0.20 - 0.2) - (0.18 - 0.1) = -0.08
    gap = s["orders1"]["gap_seed_to_seed"]
    assert gap["deletion"] == pytest.approx((0.14 + 0.08) / 2)
    assert s["orders3"]["maps"] == 2
