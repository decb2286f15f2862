"""``pda.explain_many``: many images, one model load, failures as values (issue 32)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import pda
import pda.library as library
from pda.errors import InvalidParameterError
from pda.settings import Settings
from tests.support.toys import ConvNet

SIZE = 64
NORM = dict(input_size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
QUICK = dict(window=16, stride=16, samples=1, backend="torch", **NORM)


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((80, 120, 3)) * 255).astype(np.uint8))


def test_each_image_is_explained_as_alone_and_a_bad_one_fails_alone(monkeypatch, tmp_path):
    module = ConvNet(classes=5)
    loads = []
    real_load = library.load
    monkeypatch.setattr(library, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    calls: list[tuple[int, int]] = []
    tiny = Image.new("RGB", (10, 10))
    images = [photo(1), b"not an image", tiny, photo(2)]
    items = list(pda.explain_many(images, module, progress=lambda d, t: calls.append((d, t)),
                                  faithfulness=False, settings=Settings(
                                      backend_cache_dir=tmp_path), **QUICK))
    assert loads == [1]  # the model once, for the four images
    assert [it.index for it in items] == [0, 1, 2, 3]
    assert [it.ok for it in items] == [True, False, False, True]
    assert items[1].image == b"not an image" and items[1].result is None
    assert items[1].error["status"] == 415
    assert items[1].error["type"] == "/problems/unsupported-image"
    assert items[2].error["type"] == "/problems/image-too-small"
    assert items[2].exception is not None and items[0].exception is None
    for it, seed in ((items[0], 1), (items[3], 2)):
        alone = pda.explain(photo(seed), module, faithfulness=False, **QUICK)
        np.testing.assert_array_equal(it.result.relevance, alone.relevance)
        assert it.seconds > 0
    # one count over all four: never backwards, the same total throughout, ends full
    done = [d for d, _ in calls]
    assert done == sorted(done) and len({t for _, t in calls}) == 1
    per_image = items[0].result.explanation.forward_passes - 1  # the sweep's own count
    assert calls[-1] == (4 * per_image, 4 * per_image)


def test_a_mistake_for_every_image_raises_at_the_call():
    with pytest.raises(InvalidParameterError, match="window"):
        pda.explain_many([photo(1)], ConvNet(classes=5), **{**QUICK, "window": 99})
    with pytest.raises(InvalidParameterError, match="samples"):
        pda.explain_many([photo(1)], ConvNet(classes=5), **{**QUICK, "samples": 0})


def test_the_results_come_one_at_a_time():
    seen = []

    def images():
        for k in range(3):
            seen.append(k)
            yield photo(k)

    gen = pda.explain_many(images(), ConvNet(classes=5), faithfulness=False, **QUICK)
    first = next(gen)
    assert seen == [0, 1, 2]  # the input is read up front (the bar's total needs its length)
    assert first.index == 0 and first.ok
    assert io.BytesIO(first.result.files()["input.png"]).read(4) == b"\x89PNG"
    assert len(list(gen)) == 2
