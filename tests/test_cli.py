"""``pda`` on the command line: outputs, and one clear line for every bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pda.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "examples" / "chelsea.png"


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_explain_writes_the_result_document_overlays_and_input(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(["explain", str(CAT), "--window", "28", "--stride", "28", "--samples", "1",
                     "--target", "top2", "--fit", "crop", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads((out / "result.json").read_text())
    assert doc["model"] == {"name": "efficientnet_lite0", "input_size": [224, 224]}
    assert doc["image"] == {"width": 451, "height": 300, "crop_box": [75, 0, 375, 300]}
    assert doc["params"]["window"] == 28 and doc["params"]["sampler"] == "conditional"
    assert doc["prediction"][0]["label"] == "Egyptian cat"
    assert len(doc["explanations"]) == 2
    first = doc["explanations"][0]
    assert first["unit"] == "bits" and first["target"] == 285
    assert np.array(first["relevance"]).shape == (224, 224)
    for t in (e["target"] for e in doc["explanations"]):
        with Image.open(out / f"overlay-{t}.png") as im:
            assert im.mode == "RGB" and im.width > 448
    with Image.open(out / "input.png") as im:
        assert im.size == (224, 224)
    assert np.load(out / "relevance.npy").shape == (2, 224, 224)
    assert "top-1 Egyptian cat" in err
    f = first["faithfulness"]
    assert f["protocol"]["fill"] == "blur" and 0 <= f["deletion_auc"] <= 1
    assert "pda: faithfulness of Egyptian cat: deletion AUC" in err
    # 8 x 8 windows x 1 sample + 1, and 2 + 2 x 24 x (2 targets + 3 random orders)
    assert doc["stats"]["forward_passes"] == 65 + 242 and doc["stats"][
        "faithfulness_passes"] == 242
    # auto: incremental exactly where the bench measured it faster (pda/data/incremental.json)
    from pda.engine.backends import resolve_backend
    from pda.engine.incremental.decisions import use_incremental

    backend = resolve_backend("auto", torch.device("cpu"))
    expected = use_incremental("auto", "efficientnet_lite0", "cpu", backend)
    scores = doc["runtime"].pop("faithfulness")
    assert doc["runtime"] == {"backend": "torch" if expected else backend,
                              "precision": "fp32", "device": "cpu",
                              "incremental": expected, "incremental_mode": "auto"}
    # the scores run on the fast backend even where the windows ran incrementally on torch
    assert scores["backend"] == backend and scores["precision"] == "fp32"


@pytest.mark.slow
def test_the_default_explains_the_whole_photo_and_warns_about_coverage(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(["explain", str(CAT), "--window", "56", "--stride", "64", "--target",
                     "top1", "--sampler", "constant", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads((out / "result.json").read_text())
    assert doc["params"]["fit"] == "squash"
    assert doc["image"] == {"width": 451, "height": 300, "crop_box": [0, 0, 451, 300]}
    # windows at 0, 64 and 128, 56 wide: gaps of 8 between them and 40 at the end
    assert doc["coverage"]["covered_fraction"] == pytest.approx((3 * 56 / 224) ** 2)
    assert "pda: warning: only 56% of the input is covered" in err
    with Image.open(out / f"overlay-{doc['explanations'][0]['target']}.png") as im:
        assert im.width == 451 + 110  # the whole photo at its own resolution, and the bar


def test_models_name_lists_the_layers_a_hidden_explanation_can_use(capsys):
    assert main(["models", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert "_blocks.12" in out and "192x7x7" in out and "1000 classes" in out


def test_fit_sampler_writes_statistics_the_explain_command_can_use(tmp_path, capsys):
    code, err = run(["fit-sampler", str(ROOT / "pda/data/reference"),
                     "--out", str(tmp_path / "s.npz"), "--patch-sizes", "6"], capsys)
    assert code == 0, err
    from pda.engine.stats import SamplerStats

    stats = SamplerStats.load(tmp_path / "s.npz")
    assert stats.images.shape[1:] == (256, 256, 3) and stats.gaussian(6)[0].shape == (3, 36)


def test_models_lists_the_default_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "* efficientnet_lite0" in out and "available" in out


BAD = [
    (["explain", "/nonexistent/cat.png"], "/nonexistent/cat.png"),
    (["explain", str(ROOT / "pyproject.toml")], "image"),
    (["explain", str(CAT), "--window", "500"], "window 500 exceeds"),
    (["explain", str(CAT), "--samples", "0"], "--samples"),
    (["explain", str(CAT), "--layer", "no_such_block"], "no_such_block"),
    (["explain", str(CAT), "--target", "1200"], "1200"),
    (["explain", str(CAT), "--target", "best"], "target"),
    (["explain", str(CAT), "--model", "resnet9000"], "resnet9000"),
    (["explain", str(CAT), "--sampler", "magic"], "sampler"),
    (["explain", str(CAT), "--fill", "2,0,0", "--sampler", "constant"], "fill"),
    (["explain", str(ROOT / "tests/pda/data/one-pixel.png")], "at least 32 pixels"),
    (["explain", str(CAT), "--layer", "_blocks.12", "--target", "99999"], "192 channels"),
    (["models", "resnet9000"], "resnet9000"),
    (["fit-sampler", "/nonexistent", "--out", "/tmp/x.npz"], "/nonexistent"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a[1:3]) for a, _ in BAD])
def test_bad_input_gives_one_line_and_a_nonzero_exit(args, needle, capsys, tmp_path):
    if args[0] == "explain":
        args = [*args, "--out", str(tmp_path / "o"), "--quiet"]
    code, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pda: error:") and needle in lines[-1], err
    assert "Traceback" not in err


def test_the_console_script_exits_nonzero_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pda.cli", "explain", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("pda: error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["evaluate", "--configs", "default,nope"], "unknown configuration 'nope'"),
    (["evaluate", "no-such-folder"], "no-such-folder is not a folder"),
])
def test_evaluate_refuses_bad_input_before_loading_a_model(args, needle, capsys):
    code, err = run(args, capsys)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_explain_help_states_the_parameter_models_defaults():
    """Each `(default X)` in `pda explain --help` is what ExplainParams() uses (issue 19:
    the help said window 16 while the default was 32)."""
    from pda.params import ExplainParams

    explain = build_parser()._subparsers._group_actions[0].choices["explain"]  # noqa: SLF001
    defaults = ExplainParams()
    checked = 0
    for action in explain._actions:  # noqa: SLF001
        field = action.dest
        m = re.search(r"\(default ([^;:,)]+)", action.help or "")
        if field not in ExplainParams.model_fields or m is None:
            continue
        value = getattr(defaults, field)
        if value is None:  # derived elsewhere (drill-down's coarse stride: 4x --stride)
            continue
        expected = ("on" if value else "off") if isinstance(value, bool) else str(value)
        assert m.group(1) == expected, f"--{field}: help says {m.group(1)}, default {expected}"
        checked += 1
    assert checked >= 10  # every parameter flag that states a default


def test_every_parameter_is_a_flag_with_the_models_choices():
    """The explain flags are generated from ExplainParams: a new field is a flag at once,
    and a Literal's values are the flag's choices."""
    import typing

    from pda.params import ExplainParams

    explain = build_parser()._subparsers._group_actions[0].choices["explain"]  # noqa: SLF001
    by_dest = {a.dest: a for a in explain._actions}  # noqa: SLF001
    for name, info in ExplainParams.model_fields.items():
        action = by_dest[name]  # KeyError: a parameter without a flag
        assert action.option_strings == [f"--{name.replace('_', '-')}"] or name == "faithfulness"
        assert action.default is None  # only what the line gives overrides (and presets)
        if typing.get_origin(info.annotation) is typing.Literal:
            assert list(action.choices) == list(typing.get_args(info.annotation))
    args = build_parser().parse_args(["explain", "x.png", "--no-faithfulness", "--fill",
                                      "0.1,0.2,0.3", "--drilldown", "0.25", "--fit", "pad"])
    assert (args.faithfulness, args.fill, args.drilldown, args.fit) == (
        False, (0.1, 0.2, 0.3), 0.25, "pad")
