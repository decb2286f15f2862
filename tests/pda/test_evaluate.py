"""``pda evaluate``: rows per configuration and image, every metric family on the box
model (whose answer is known), the pass estimate, the tables and their files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pda.errors import InvalidParameterError
from pda.tools import evaluate as ev
from pda.tools.metrics import Protocol
from tests.support.paths import REFERENCE_PHOTOS
from tests.support.toys import box_case, random_stats, wrap

SMALL = Protocol(orders=2, block=4, subsets=24, subset_block=4, region=8, regions=6)


class BoxHead(nn.Module):
    """The box model with a learned-looking head: feature = mean red in the box, logits =
    Linear(1, 2)(feature) = (12 (f - 0.5), 0), as BoxModel, with a layer to reset."""

    def __init__(self, region):
        super().__init__()
        self.region = region
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[12.0], [0.0]]))
            self.head.bias.copy_(torch.tensor([-6.0, 0.0]))

    def forward(self, x):
        r, c = self.region
        return self.head(x[:, 0, r, c].mean(dim=(1, 2))[:, None])


def _configs(*names):
    # PDA configurations at the toy's size (window 8 / stride 4 on 32 x 32)
    return {n: (c if "method" in c else {**c, "window": 8, "stride": 4})
            for n, c in ev.pick_configs(list(names)).items()}


def test_the_box_model_scores_as_it_must_on_every_family():
    _, x = box_case()
    model = wrap(BoxHead((slice(8, 16), slice(20, 28))), 32)
    y = x.clone()
    y[1] += 0.2
    configs = _configs("occlusion", "random")
    rows = ev.run(model, [("a.png", x), ("b.png", y)], configs, random_stats(),
                  batch_size=16, backend="torch", protocol=SMALL)
    assert [(r["config"], r["image"]) for r in rows] == [
        ("occlusion", "a.png"), ("occlusion", "b.png"), ("random", "a.png"),
        ("random", "b.png")]
    for r in rows[:2]:  # the occlusion map is the box: it beats random on every family
        for fill in ("blur", "road"):
            assert r[f"{fill}_morf"] < r[f"{fill}_random"] - 0.2
            assert r[f"{fill}_lerf"] > r[f"{fill}_random"]
            assert r[f"{fill}_srg"] == pytest.approx(r[f"{fill}_lerf"] - r[f"{fill}_morf"])
        assert r["correlation"] > 0.5
        # a one-feature head can only rescale or flip the map: |map| keeps its ranks
        assert r["rand_spearman_abs"] > 0.9
    for r in rows[2:]:  # a random map does not depend on the model: it fails the check
        assert r["rand_spearman"] == pytest.approx(1.0) and r["sweep_passes"] == 0
        assert r["correlation"] < rows[0]["correlation"]
    for occ, rnd in zip(rows[:2], rows[2:], strict=True):
        # black in the box kills the class: the box's map flips it within its first
        # pixels and regions, a random map only when it happens on the box
        assert occ["pf_auc"] < 0.25 * rnd["pf_auc"]
        assert occ["rp_aopc"] > rnd["rp_aopc"] + 0.2
        assert 0 <= occ["pf_auc"] <= 1 and 0 <= occ["rp_aopc"] <= 1
    # the estimate is the passes the run made (the baseline once per image)
    made = sum(r["sweep_passes"] + r["metric_passes"] for r in rows)
    assert ev.estimate(configs, 2, 32, 32, SMALL, ev.FAMILIES) == made


def test_summary_paired_differences_and_files(tmp_path):
    model, x = box_case()
    y = x.clone()
    y[2] += 0.1
    configs = _configs("occlusion", "gradient", "random")
    rows = ev.run(model, [("a.png", x), ("b.png", y)], configs, random_stats(),
                  batch_size=16, backend="torch", protocol=SMALL,
                  families=("removal", "correlation"))
    table = ev.summarize(rows)
    assert [e["config"] for e in table] == ["occlusion", "gradient", "random"]
    occ = table[0]
    mean = (rows[0]["blur_morf_gap"] + rows[1]["blur_morf_gap"]) / 2
    assert occ["blur_morf_gap"]["mean"] == pytest.approx(mean, abs=1e-4)
    lo, hi = occ["blur_morf_gap"]["ci95"]
    assert min(rows[0]["blur_morf_gap"], rows[1]["blur_morf_gap"]) - 1e-4 <= lo <= hi
    assert occ["blur_beats_random"] == {"morf": 2, "lerf": 2, "both": 2}
    assert occ["sweep_passes"] == 7 * 7 + 1  # (32 - 8) / 4 + 1 = 7 per side, + the image
    pairs = ev.paired(rows, "occlusion")
    assert [p["config"] for p in pairs] == ["gradient", "random"]
    d = [r["road_srg"] - rows[i % 2]["road_srg"] for i, r in enumerate(rows[4:])]
    assert pairs[1]["road_srg"]["mean"] == pytest.approx(sum(d) / 2, abs=1e-4)
    assert pairs[1]["road_srg"]["better"] == -1  # a random map is worse than the box
    settings = {c: ev.settings_text(f) for c, f in configs.items()}
    md, js = ev.write(tmp_path, rows, table, settings, {"model": "toy"}, pairs)
    text = md.read_text()
    assert "| occlusion | constant k8 s4 S1 | 2 |" in text
    assert "| gradient | gradient saliency max\\|dp/dx\\| | 2 |" in text  # one cell
    assert "road SRG (LeRF − MoRF) ↑" in text and "config − occlusion" in text
    assert json.loads(js.read_text())["table"][0]["sweep_passes"] == 50


def test_progress_reports_phase_passes_and_eta():
    lines = []
    bar = ev.Progress(100, lines.append, every=0)
    bar.phase("[1/2 default] image 1/3 a.png: map")
    bar.add(25)
    assert lines[0].startswith("[1/2 default] image 1/3 a.png: map  passes 0/100")
    assert "ETA ?" in lines[0]
    assert "passes 25/100" in lines[1] and "ETA ?" not in lines[1]


def test_bootstrap_interval_brackets_the_mean_and_is_repeatable():
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    m, lo, hi = ev.mean_ci(values)
    assert m == pytest.approx(0.3) and lo < m < hi and (lo, hi) == ev.mean_ci(values)[1:]
    assert ev.mean_ci([0.7]) == (0.7, 0.7, 0.7)


def test_unknown_configurations_families_and_the_image_limit(tmp_path):
    with pytest.raises(InvalidParameterError, match="unknown configuration 'nope'"):
        ev.pick_configs(["default", "nope"])
    with pytest.raises(InvalidParameterError, match="unknown metric family 'x'"):
        ev.pick_families(["removal", "x"])
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in ev.list_images(tmp_path)] == ["a.jpg", "b.png"]
    assert [p.name for p in ev.list_images(tmp_path, 1)] == ["a.jpg"]
    assert len(ev.list_images(REFERENCE_PHOTOS)) == 8


def test_the_evaluation_photos_are_many_small_listed_and_not_the_fitting_set():
    from PIL import Image

    files = ev.list_images(ev.EVAL_DIR)
    assert len(files) >= 24 and ev.EVAL_DIR != REFERENCE_PHOTOS
    readme = (ev.EVAL_DIR / "README.md").read_text()
    reference = {p.stem for p in ev.list_images(REFERENCE_PHOTOS)}
    for f in files:
        assert f"`{f.name}`" in readme  # each photo has its source and licence row
        assert f.stem not in reference
        assert max(Image.open(f).size) <= 256
    assert sum(f.stat().st_size for f in files) < 3 * 2**20


def test_the_cli_says_how_long_before_it_starts(tmp_path, capsys):
    import shutil

    from pda.cli import main

    shutil.copy(ev.EVAL_DIR / "tiger.jpg", tmp_path / "tiger.jpg")
    code = main(["evaluate", str(tmp_path), "--configs", "occlusion", "--families",
                 "removal", "--backend", "torch", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 0
    # occlusion k32 s8 at 224: 625 windows + 1; removal 2 fills x (2 + 2 x 9); the random
    # baseline 2 x (2 + 3 x 9), once per photo
    assert "about 724 forward passes at " in err and " passes/s measured now: ~" in err
    assert "ROAD's sparse solves" in err
    assert main(["evaluate", str(tmp_path), "--families", "nope"]) == 2
    assert "unknown metric family 'nope'" in capsys.readouterr().err


def test_older_configuration_names_still_work_and_unknown_ones_are_named():
    from pda.errors import InvalidParameterError
    from pda.tools.evaluate import CONFIGS, pick_configs

    got = pick_configs(["context", "constant", "wide"])
    assert list(got) == ["context", "constant", "wide"]  # filed under the names asked for
    assert got["context"] == CONFIGS["default"] and got["constant"] == CONFIGS["occlusion"]
    assert "context" not in CONFIGS and "constant" not in CONFIGS  # one entry per setting
    with pytest.raises(InvalidParameterError, match="unknown configuration 'contxt'"):
        pick_configs(["contxt"])


def test_random_logit_family_on_the_box_model():
    """Two classes: class 1's weight of evidence is minus class 0's (its odds are the
    inverse), so the other class's map is the exact mirror image: Spearman -1, and 1 on
    |map|. The family takes no passes for a PDA sweep and leaves the top class's map as
    it is."""
    model, x = box_case()
    configs = _configs("occlusion", "gradient", "random")
    rows = ev.run(model, [("a.png", x)], configs, random_stats(), batch_size=16,
                  backend="torch", protocol=SMALL, families=("removal", "random-logit"))
    occ, grad, rnd = rows
    assert all(r["logit_class"] == 1 for r in rows)
    assert occ["logit_spearman"] == pytest.approx(-1.0)
    assert occ["logit_spearman_abs"] == pytest.approx(1.0)
    # gradient of p1 = -gradient of p0: |map| is the same map
    assert grad["logit_spearman"] == pytest.approx(1.0)
    assert abs(rnd["logit_spearman"]) < 0.5  # two independent random maps
    plain = ev.run(model, [("a.png", x)], configs, random_stats(), batch_size=16,
                   backend="torch", protocol=SMALL, families=("removal",))
    for r, q in zip(rows, plain, strict=True):
        assert {k: v for k, v in r.items() if "_" in k and k.startswith(("blur", "road"))} == {
            k: v for k, v in q.items() if "_" in k and k.startswith(("blur", "road"))}
        assert r["sweep_passes"] == q["sweep_passes"]
    assert occ["metric_passes"] == plain[0]["metric_passes"]  # no passes of its own
    assert grad["metric_passes"] == plain[1]["metric_passes"] + 2
    made = sum(r["sweep_passes"] + r["metric_passes"] for r in rows)
    assert ev.estimate(configs, 1, 32, 32, SMALL, ("removal", "random-logit")) == made
    table = ev.summarize(rows)
    assert table[0]["logit_spearman"]["mean"] == pytest.approx(-1.0)
    text = ev.markdown(table, {}, ev.paired(rows, "occlusion"))
    assert "other class Spearman (0 ideal)" in text and "other class Spearman \\|map\\| ↓" in text
    # the drill-down refines where a class's map is large: one call per class
    (dd,) = ev.run(model, [("a.png", x)], _configs("drilldown"), random_stats(),
                   batch_size=16, backend="torch", protocol=SMALL, families=("random-logit",))
    assert dd["logit_spearman"] == pytest.approx(-1.0)
    assert dd["metric_passes"] == dd["sweep_passes"] > 0


def test_the_random_other_class_is_uniform_over_the_others_and_fixed_by_the_seed():
    picks = [ev.other_class(5, 2, seed=0, image=i) for i in range(400)]
    assert set(picks) == {0, 1, 3, 4}
    assert min(picks.count(c) for c in (0, 1, 3, 4)) > 60  # 100 expected of each
    assert picks == [ev.other_class(5, 2, seed=0, image=i) for i in range(400)]
    assert picks != [ev.other_class(5, 2, seed=1, image=i) for i in range(400)]
    assert ev.other_class(2, 0, seed=3, image=7) == 1
