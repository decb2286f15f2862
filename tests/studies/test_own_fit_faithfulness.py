"""studies/faithfulness/own_fit_faithfulness.py: the own fit is the photo's, and both maps
are scored by the same protocol in one run (real model, one photo, a coarse tiny grid)."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

SCRIPT = Path(__file__).parents[2] / "studies" / "faithfulness" / "own_fit_faithfulness.py"
spec = importlib.util.spec_from_file_location("own_fit_faithfulness", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_the_own_fit_is_the_photos_gaussian():
    from pda.engine.stats import get_stats

    shipped = get_stats()
    x = torch.zeros(3, 64, 64)
    x[0] = 0.8  # a red photo with a blue-green stripe: its own patch means are its colours
    x[1, :, 32:40] = 0.4
    mine = study.own_stats(shipped, x, 8, seed=0)
    mu, cov = mine.gaussian(8)
    assert np.allclose(mu[0], 204 / 255, atol=1e-6)  # the red channel is constant
    assert np.allclose(cov[0], 0, atol=1e-9)
    assert 0.0 < mu[1].mean() < 0.4 and cov[1].trace() > 0  # the stripe, in some patches
    assert mine.images is shipped.images  # the rest is the shipped set
    assert not np.allclose(shipped.gaussian(8)[0], mu)


def test_one_photo_through_the_classifier(tmp_path):
    out = tmp_path / "own.json"
    r = study.main(["--images", "1", "--window", "12", "--stride", "56", "--samples", "1",
                    "--out", str(out)])
    assert [row["config"] for row in r["rows"]] == ["shipped", "own"]
    shipped, own = r["rows"]
    assert shipped["image"] == own["image"] and shipped["target"] == own["target"]
    assert shipped["sweep_passes"] == own["sweep_passes"] == 4 * 4 + 1
    # the same protocol: the baseline is shared, the maps (other Gaussians) are not
    assert shipped["blur_random"] == own["blur_random"]
    assert shipped["road_random"] == own["road_random"]
    assert shipped["correlation"] != own["correlation"]
    assert out.exists() and r["paired"]
