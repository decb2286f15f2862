"""pda.batch_files: item folders, summary.json and the contact sheet of a batch (issue 32).

``data/batch-document.json`` and ``data/batch-overlay.png`` are a real result document and
overlay, written by ``pda.explain`` of the 120x80 random photo of tests/pda/test_library.py
with ``ConvNet(classes=5)`` at 64x64 (window 16, stride 16, samples 1, target top2)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pda.batch_files import (
    FAILED_GREY,
    contact_sheet,
    item_folder,
    summary_document,
    summary_entry,
    tile_caption,
)
from pda.errors import InvalidImageError
from pda.problems import to_problem

DATA = Path(__file__).with_name("data")
DOCUMENT = json.loads((DATA / "batch-document.json").read_text())
OVERLAY = (DATA / "batch-overlay.png").read_bytes()


@pytest.mark.parametrize(("index", "name", "folder"), [
    (1, "cat.jpg", "0001-cat"),
    (0, "photos/2024/dog.png", "0000-dog"),
    (12, "C:\\Users\\me\\holiday pic (1).JPEG", "0012-holiday-pic-1"),
    (3, "../../etc/passwd", "0003-passwd"),
    (4, ".hidden", "0004-hidden"),
    (5, "café crème.webp", "0005-cafe-creme"),
    (6, None, "0006-image"),
    (7, "???.png", "0007-image"),
    (12345, "a.b.c.png", "12345-a.b.c"),
])
def test_item_folders_are_safe_and_keep_the_name(index, name, folder):
    assert item_folder(index, name) == folder


def test_item_folders_are_unique_for_one_name_and_bounded():
    assert item_folder(1, "x.png") != item_folder(2, "x.png")
    long = item_folder(9, "a" * 500 + ".png")
    assert long == "0009-" + "a" * 60
    with pytest.raises(ValueError, match="negative"):
        item_folder(-1, "x.png")


def test_a_finished_items_entry_reads_the_document():
    entry = summary_entry(index=2, filename="dir/photo.png", status="finished",
                          document=DOCUMENT, error=None, seconds=None)
    top = DOCUMENT["prediction"][0]
    assert entry["top1"] == {"class_index": 2, "label": "class 2",
                             "probability": top["probability"]}
    assert 0.9 < entry["top1"]["probability"] < 1
    assert [t["target"] for t in entry["targets"]] == [2, 1]
    first = DOCUMENT["explanations"][0]["faithfulness"]
    assert entry["targets"][0] == {
        "target": 2, "label": "class 2", "deletion_auc": first["deletion_auc"],
        "insertion_auc": first["insertion_auc"],
        "baseline": {"deletion_auc": first["baseline"]["deletion_auc"],
                     "insertion_auc": first["baseline"]["insertion_auc"]}}
    assert entry["forward_passes"] == DOCUMENT["stats"]["forward_passes"] > 0
    assert entry["seconds"] == DOCUMENT["stats"]["seconds"]  # the sweep's, when none given
    assert entry["folder"] == "0002-photo" and entry["file"] == "dir/photo.png"
    assert entry["error"] is None and entry["status"] == "finished"
    json.dumps(entry)  # plain JSON


def test_an_entry_without_faithfulness_has_only_the_targets():
    doc = {**DOCUMENT, "explanations": [{k: v for k, v in e.items() if k != "faithfulness"}
                                        for e in DOCUMENT["explanations"]]}
    entry = summary_entry(index=0, filename="a.png", status="finished", document=doc,
                          error=None, seconds=1.23456)
    assert entry["targets"] == [{"target": 2, "label": "class 2"},
                                {"target": 1, "label": "class 1"}]
    assert entry["seconds"] == 1.235  # the caller's, rounded to ms


def test_a_failed_items_entry_keeps_its_problem_document():
    problem = to_problem(InvalidImageError("cannot identify image file"))
    entry = summary_entry(index=1, filename="bad.jpg", status="failed", document=None,
                          error=problem, seconds=0.01)
    assert entry["error"] == problem and entry["error"]["status"] == problem["status"] == 415
    assert entry["top1"] is None and entry["targets"] is None
    assert entry["forward_passes"] is None
    assert tile_caption(entry) == f"bad.jpg\nfailed: {problem['title']}"


def test_the_summary_counts_by_status_in_index_order():
    ok = summary_entry(index=1, filename="b.png", status="finished", document=DOCUMENT,
                       error=None, seconds=2.0)
    bad = summary_entry(index=0, filename="a.png", status="failed", document=None,
                        error={"title": "Invalid image"}, seconds=None)
    queued = summary_entry(index=2, filename="c.png", status="canceled", document=None,
                           error=None, seconds=None)
    summary = summary_document([ok, bad, queued], {"window": 16, "preset": None})
    assert [e["index"] for e in summary["items"]] == [0, 1, 2]
    assert summary["counts"] == {"total": 3, "finished": 1, "failed": 1, "canceled": 1}
    assert summary["params"] == {"window": 16, "preset": None}
    assert summary_document([], {})["counts"] == {"total": 0, "finished": 0, "failed": 0}
    assert tile_caption(ok) == f"b.png\nclass 2 {ok['top1']['probability']:.2f}"
    assert tile_caption(queued) == "c.png\ncanceled"


def _sheet(tiles, **kw) -> Image.Image:
    return Image.open(io.BytesIO(contact_sheet(tiles, **kw))).convert("RGB")


def test_the_sheet_is_a_grid_of_the_tiles():
    one = _sheet([("a", OVERLAY)], tile=100)
    w1, h1 = one.size
    assert w1 >= 100 and h1 > 100  # a caption below the tile
    for n, (cols, rows) in {2: (2, 1), 5: (3, 2), 9: (3, 3), 70: (8, 9)}.items():
        sheet = _sheet([("a", OVERLAY)] * n, tile=100)
        assert sheet.size == (cols * w1, rows * h1), n
        assert cols == min(8, math.ceil(math.sqrt(n)))
    assert _sheet([("a", OVERLAY)] * 5, tile=100, columns=5).size == (5 * w1, h1)
    assert _sheet([("a", OVERLAY)] * 3, tile=64, columns=1).size[1] > 3 * 64


def test_a_tile_shows_the_thumbnail_and_a_failed_one_is_grey():
    sheet = np.asarray(_sheet([("ok.png\nclass 2 0.95", OVERLAY), ("bad.png\nfailed: x", None),
                               ("junk", b"not an image")], tile=100, columns=3))
    cell = sheet.shape[1] // 3
    thumb = Image.open(io.BytesIO(OVERLAY))
    thumb.thumbnail((100, 100), Image.Resampling.LANCZOS)
    expected = np.asarray(thumb.convert("RGB")).astype(int)
    assert expected.shape == (47, 100, 3)  # the 230 x 108 overlay, aspect kept
    # the overlay's thumbnail is in the first cell, centred in its square (pad 2 px)
    y0 = 2 + (100 - 47) // 2
    np.testing.assert_array_equal(sheet[y0:y0 + 47, 2:102].astype(int), expected)
    assert (sheet[2:y0, 2:102] == 255).all()  # white above it
    # a missing and an undecodable image: a grey square
    for k in (1, 2):
        square = sheet[10:60, k * cell + 10:k * cell + 60]
        grey = (square == FAILED_GREY).all(axis=2).mean()
        assert grey > 0.9, (k, grey)


def test_the_captions_are_drawn():
    blank = np.asarray(_sheet([("", None)], tile=120)).astype(int)
    named = np.asarray(_sheet([("cat.jpg\ntabby 0.93", None)], tile=120)).astype(int)
    one_line = np.asarray(_sheet([("cat.jpg", None)], tile=120)).astype(int)
    caption = slice(125, None)  # below the tile
    diff = (named[caption] != blank[caption]).any(axis=2)
    assert diff.sum() > 50  # text pixels
    rows = np.nonzero(diff.any(axis=1))[0]
    second = (named[caption] != one_line[caption]).any(axis=2)
    assert second.any() and np.nonzero(second.any(axis=1))[0].min() > rows.min()  # line 2
    # the tile area is the same: the caption is not drawn over the image
    assert (named[:120] == blank[:120]).all()


def test_a_long_caption_is_cut_to_the_tile():
    long = np.asarray(_sheet([("x" * 300, None), ("y", None)], tile=80, columns=2))
    short = np.asarray(_sheet([("x", None), ("y", None)], tile=80, columns=2))
    cell = long.shape[1] // 2
    # the first caption is longer, up to the cell's edge, and nothing spills into the next
    assert (long[84:, 30:cell] != short[84:, 30:cell]).any()
    np.testing.assert_array_equal(long[:, cell:], short[:, cell:])


def test_lazy_tiles_are_loaded_one_at_a_time():
    calls = []

    def load(k):
        def get():
            calls.append(k)
            return OVERLAY
        return get

    a = contact_sheet([(f"{k}", load(k)) for k in range(4)], tile=64)
    assert calls == [0, 1, 2, 3]
    assert a == contact_sheet([(f"{k}", OVERLAY) for k in range(4)], tile=64)


def test_no_tiles_is_one_blank_tile():
    sheet = _sheet([], tile=64)
    assert sheet.size == _sheet([("", None)], tile=64).size


def test_the_module_loads_no_torch_nor_numpy():
    code = ("import sys, pda.batch_files; "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]
