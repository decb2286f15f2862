"""Overlays on the whole photo, colour scales, fits and the coverage warning."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pda.document import coverage
from pda.images import PAD_COLOUR, fit_array, placement
from pda.render import BAR_WIDTH, TITLE_HEIGHT, render_overlay


def grey_photo(w: int = 300, h: int = 200) -> Image.Image:
    return Image.new("RGB", (w, h), (128, 128, 128))


def document(fit: str, maxima=(1.0,), size=(300, 200)) -> dict:
    place = placement(size, (224, 224), fit)
    return {
        "model": {"name": "toy", "input_size": [224, 224]},
        "image": {"width": size[0], "height": size[1], "crop_box": list(place.crop_box)},
        "params": {"fit": fit},
        "explanations": [{"target": i, "label": f"c{i}", "unit": "bits", "max_abs": m}
                         for i, m in enumerate(maxima)],
    }


def pixels(png: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return a[TITLE_HEIGHT:]  # below the title


def test_the_photo_overlay_hatches_what_the_centre_crop_left_unexplained():
    rel = np.ones((1, 224, 224), np.float32)  # evidence for, everywhere the model saw
    counts = np.ones((224, 224), np.int32)
    png = render_overlay(document("crop"), rel, counts, 0, photo=grey_photo())
    a = pixels(png)
    assert a.shape[1] == 300 + BAR_WIDTH  # the photo at its own resolution, plus the bar
    seen = a[100, 150]  # inside the crop box (50..250): red
    assert seen[0] > seen[1] + 80 and seen[0] > seen[2] + 80
    for x in (10, 290):  # the margins: grey, no colour
        margin = a[100:140, x]
        assert np.abs(margin[:, 0] - margin[:, 1]).max() <= 2
        assert np.abs(margin[:, 1] - margin[:, 2]).max() <= 2
    assert len(np.unique(a[100:160, 5:45, 0])) >= 2  # hatching lines, not a flat fill


@pytest.mark.parametrize("fit", ["squash", "pad"])
def test_whole_photo_fits_explain_every_pixel_of_it(fit):
    rel = np.full((1, 224, 224), -1.0, np.float32)  # evidence against: blue
    counts = np.ones((224, 224), np.int32)
    a = pixels(render_overlay(document(fit), rel, counts, 0, photo=grey_photo()))[:200, :300]
    assert (a[:, :, 2] > a[:, :, 0] + 50).all()


def test_pixels_no_window_covers_are_marked_unexplained_too():
    rel = np.ones((1, 224, 224), np.float32)
    counts = np.ones((224, 224), np.int32)
    counts[:, 200:] = 0  # a stride that leaves the right edge uncovered
    a = pixels(render_overlay(document("squash"), rel, counts, 0, photo=grey_photo()))
    assert a[50, 100, 0] > a[50, 100, 1] + 80
    edge = a[50:90, 295]
    assert np.abs(edge[:, 0] - edge[:, 2]).max() <= 2


def test_a_shared_scale_keeps_a_weak_target_weak_and_own_stretches_it():
    rel = np.stack([np.ones((224, 224)), np.full((224, 224), 0.1)]).astype(np.float32)
    counts = np.ones((224, 224), np.int32)
    doc = document("squash", maxima=(1.0, 0.1))
    shared = pixels(render_overlay(doc, rel, counts, 1, photo=grey_photo()))[100, 150]
    own = pixels(render_overlay(doc, rel, counts, 1, photo=grey_photo(), scale="own"))[100, 150]
    strong = pixels(render_overlay(doc, rel, counts, 0, photo=grey_photo()))[100, 150]
    assert own[0] - own[1] == pytest.approx(strong[0] - strong[1], abs=2)  # own: full red
    assert shared[0] - shared[1] < (own[0] - own[1]) / 3  # shared: a tenth of the range


def test_pad_letterboxes_the_whole_photo_on_the_neutral_colour():
    photo = Image.new("RGB", (300, 150), (255, 0, 0))
    a, place = fit_array(photo, (224, 224), "pad")
    assert place.crop_box == (0, 0, 300, 150) and place.content_box == (0, 56, 224, 168)
    assert tuple(a[10, 100]) == PAD_COLOUR and tuple(a[112, 100]) == (255, 0, 0)
    squash, place = fit_array(photo, (224, 224), "squash")
    assert place.content_box == (0, 0, 224, 224) and (squash[:, :, 0] == 255).all()


def test_partial_coverage_comes_with_a_warning():
    counts = np.zeros((224, 224), np.int32)
    counts[:12, :] = 1
    cov = coverage(counts, window=12, stride=32)
    assert cov["covered_fraction"] == pytest.approx(12 / 224)
    assert "only 5% of the input is covered" in cov["warning"]
    assert "warning" not in coverage(np.ones((4, 4), np.int32), 2, 2)
