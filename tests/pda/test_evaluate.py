"""``pda evaluate``: rows per configuration and image, the summary table and its files."""

from __future__ import annotations

import json

import pytest

from pda import evaluate as ev
from pda.errors import InvalidParameterError

from .test_faithfulness import _box_case
from .toys import random_stats


def test_evaluate_scores_every_configuration_on_every_image(tmp_path):
    model, x = _box_case()
    y = x.clone()
    y[1] += 0.2
    # the default's geometry at this toy size (window 16 / stride 8), whatever the defaults
    configs = {name: {**c, "window": 16, "stride": 8}
               for name, c in ev.pick_configs(["default", "constant"]).items()}
    rows = ev.run(model, [("a.png", x), ("b.png", y)], configs, random_stats(),
                  batch_size=16)
    assert [(r["config"], r["image"]) for r in rows] == [
        ("default", "a.png"), ("default", "b.png"), ("constant", "a.png"), ("constant", "b.png")]
    # window 16 / stride 8 on 32 x 32: 9 windows x 4 samples + 1; constant: 9 + 1
    assert [r["sweep_passes"] for r in rows] == [37, 37, 10, 10]
    assert all(r["faithfulness_passes"] == 2 + 2 * 48 * 4 for r in rows)
    for r in rows:
        assert r["deletion_gap"] == pytest.approx(r["deletion_auc"] - r["baseline_deletion_auc"])
        assert r["deletion_auc"] < r["baseline_deletion_auc"]  # the box model is easy
    table = ev.summarize(rows)
    assert [e["config"] for e in table] == ["default", "constant"]
    d = table[0]
    mean = (rows[0]["deletion_auc"] + rows[1]["deletion_auc"]) / 2
    assert d["deletion_auc"]["mean"] == pytest.approx(mean, abs=1e-4)
    lo, hi = d["deletion_auc"]["ci95"]
    assert min(rows[0]["deletion_auc"], rows[1]["deletion_auc"]) - 1e-4 <= lo <= hi
    assert hi <= max(rows[0]["deletion_auc"], rows[1]["deletion_auc"]) + 1e-4
    assert d["deletion_beats_random"] == 2 and d["sweep_passes"] == 37
    md, js = ev.write(tmp_path, rows, table, configs, {"model": "toy"})
    text = md.read_text()
    assert "| default | conditional k16 s8 S4 | 2 |" in text
    assert "| constant | constant k16 s8 S1 | 2 |" in text  # one pass per window
    assert json.loads(js.read_text())["table"][1]["sweep_passes"] == 10


def test_bootstrap_interval_brackets_the_mean_and_is_repeatable():
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    m, lo, hi = ev.mean_ci(values)
    assert m == pytest.approx(0.3) and lo < m < hi and (lo, hi) == ev.mean_ci(values)[1:]
    assert ev.mean_ci([0.7]) == (0.7, 0.7, 0.7)


def test_unknown_configurations_and_the_image_limit(tmp_path):
    with pytest.raises(InvalidParameterError, match="unknown configuration 'nope'"):
        ev.pick_configs(["default", "nope"])
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in ev.list_images(tmp_path)] == ["a.jpg", "b.png"]
    assert [p.name for p in ev.list_images(tmp_path, 1)] == ["a.jpg"]
    assert len(ev.list_images(ev.REFERENCE_DIR)) == 8
