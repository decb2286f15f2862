"""``pda explain DIR_OR_FILES... --out DIR``: many images, one bar, a folder per image,
summary.json and the contact sheet; a rerun resumes (issue 32). A tiny exported model
(tests/support/toys.ConvNet, 64 x 64) keeps each run to seconds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pda.library as library
from pda.batch_files import CONTACT_SHEET, FAILED_GREY, SUMMARY, contact_sheet
from pda.cli import main
from tests.support.toys import ConvNet

SIZE = 64
FLAGS = ["--window", "16", "--stride", "16", "--samples", "1", "--backend", "torch"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    net = ConvNet(classes=4).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(net, (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, folder / "mine.pt2")
    (folder / "mine.json").write_text(json.dumps({"input_size": [SIZE, SIZE],
                                                  "mean": [0.5] * 3, "std": [0.25] * 3}))
    return folder / "mine.pt2"


def photos(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, name in enumerate(names):
        rng = np.random.default_rng(k)
        Image.fromarray((rng.random((80, 120, 3)) * 255).astype(np.uint8)).save(folder / name)
        out.append(folder / name)
    return out


def explain(args: list[str], model: Path, out: Path, capsys, *more: str) -> tuple[int, str]:
    code = main(["explain", *args, "--model", str(model), *FLAGS, *more, "--out", str(out)])
    return code, capsys.readouterr().err


def test_a_folder_with_a_corrupt_image_explains_the_others_and_exits_1(
        tmp_path, model_file, capsys):
    photos(tmp_path / "in", ["b.png", "a.png", "c.jpg"])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "in" / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"
    code, err = explain([str(tmp_path / "in")], model_file, out, capsys)
    assert code == 1
    # sorted by name; the corrupt one is one line and its problem document
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["0000-a", "0001-b", "0003-c"]
    failed = [ln for ln in err.splitlines() if "broken.jpg" in ln]
    assert len(failed) == 1 and "failed: Not a supported image" in failed[0]
    assert "3 of 4 images explained, 1 failed" in err and "Traceback" not in err
    assert "images:" in err and "pass/s" in err  # one bar, over all the items
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["counts"] == {"total": 4, "finished": 3, "failed": 1}
    assert summary["params"]["model"] == str(model_file)
    assert summary["params"]["window"] == 16 and summary["params"]["samples"] == 1
    by_name = {Path(e["file"]).name: e for e in summary["items"]}
    assert by_name["broken.jpg"]["status"] == "failed"
    assert by_name["broken.jpg"]["error"]["status"] == 415
    assert by_name["broken.jpg"]["folder"] == "0002-broken"
    a = by_name["a.png"]
    doc = json.loads((out / "0000-a" / "result.json").read_text())
    assert a["top1"]["class_index"] == doc["prediction"][0]["class_index"]
    assert a["top1"]["probability"] == doc["prediction"][0]["probability"]
    f = doc["explanations"][0]["faithfulness"]
    assert a["targets"][0]["deletion_auc"] == f["deletion_auc"]
    assert a["targets"][0]["baseline"]["insertion_auc"] == f["baseline"]["insertion_auc"]
    assert a["forward_passes"] == doc["stats"]["forward_passes"]
    names = {p.name for p in (out / "0000-a").iterdir()}
    assert {"result.json", "relevance.npy", "input.png"} <= names
    assert sum(n.startswith("overlay-") for n in names) == 3
    sheet = Image.open(out / CONTACT_SHEET)
    blank = Image.open(io.BytesIO(contact_sheet([("", None)] * 4)))
    assert sheet.format == "PNG" and sheet.size == blank.size  # 2 x 2 tiles of 160 px
    pixels = np.asarray(sheet.convert("RGB"))
    cell_h = sheet.size[1] // 2
    broken = pixels[cell_h + 20:cell_h + 140, 20:140]  # item 2: row 1, column 0
    assert (broken == FAILED_GREY).all(axis=2).mean() > 0.9
    a_tile = pixels[20:140, 20:140]  # item 0's overlay thumbnail, not grey
    assert (a_tile == FAILED_GREY).all(axis=2).mean() < 0.1


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, model_file, capsys,
                                                      monkeypatch):
    images = photos(tmp_path / "in", ["one.png", "two.png", "three.png"])
    out = tmp_path / "out"
    real_run = library._run
    runs: list[str] = []

    def interrupted(image, *a, **k):  # Ctrl-C during the second image's sweep
        runs.append(Path(image).name)
        if len(runs) == 2:
            raise KeyboardInterrupt
        return real_run(image, *a, **k)

    monkeypatch.setattr(library, "_run", interrupted)
    code, err = explain([str(p) for p in images], model_file, out, capsys, "--no-faithfulness")
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in out.iterdir()) == ["0000-one"]  # whole, nothing partial
    first = out / "0000-one" / "result.json"
    written = first.stat().st_mtime_ns

    monkeypatch.setattr(library, "_run", lambda image, *a, **k: (
        runs.append(Path(image).name), real_run(image, *a, **k))[1])
    runs.clear()
    code, err = explain([str(p) for p in images], model_file, out, capsys, "--no-faithfulness")
    assert code == 0, err
    assert runs == ["two.png", "three.png"]  # the first is not explained again
    assert first.stat().st_mtime_ns == written
    assert "1 of 3 images already in" in err
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["counts"] == {"total": 3, "finished": 3, "failed": 0}
    assert [e["folder"] for e in summary["items"]] == ["0000-one", "0001-two", "0002-three"]
    assert summary["items"][0]["top1"] is not None  # read back from the earlier run


def test_one_image_keeps_the_flat_output(tmp_path, model_file, capsys):
    (image,) = photos(tmp_path / "in", ["p.png"])
    code, err = explain([str(image)], model_file, tmp_path / "out", capsys)
    assert code == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "result.json" in names and SUMMARY not in names and CONTACT_SHEET not in names
    assert "sweep" in err and "top-1" in err


@pytest.mark.parametrize(("paths", "needle"), [
    (["{tmp}/missing.png", "{tmp}/in/p.png"], "missing.png: no such file or folder"),
    (["{tmp}/empty"], "has no image files"),
])
def test_a_missing_input_is_one_line_before_any_work(paths, needle, tmp_path, capsys):
    photos(tmp_path / "in", ["p.png"])
    (tmp_path / "empty").mkdir()
    args = [p.format(tmp=tmp_path) for p in paths]
    # the model does not exist either: the inputs are checked first, before it loads
    code, err = explain(args, tmp_path / "no-model.pt2", tmp_path / "out", capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err
    assert not (tmp_path / "out").exists()
