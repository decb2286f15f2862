"""The real default model on a real photo (slow: about a minute on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pda.engine.explain import explain
from pda.engine.inputs import preprocess
from pda.engine.stats import get_stats
from pda.images import open_image
from pda.models.registry import get_model
from pda.params import ExplainParams
from pda.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
CAT_CLASSES = {281, 282, 283, 284, 285, 286, 287}  # tabby .. lynx in ImageNet
CAT_BOX = (88, 88, 216, 216)  # where the cat is pasted (left, top, right, bottom)

pytestmark = pytest.mark.slow


def cat_on_astronaut() -> Image.Image:
    """Chelsea (CC0) pasted at a known place over the astronaut photo (public domain).

    The astronaut is a busy, non-cat background, so "evidence on the animal" is a real
    question, and the cat's pixels are known exactly.
    """
    bg = Image.open(ROOT / "pda/data/reference/astronaut.png").convert("RGB")
    side = min(bg.size)
    bg = bg.crop((0, 0, side, side)).resize((224, 224), Image.BICUBIC)
    cat = Image.open(ROOT / "examples/chelsea.png").convert("RGB").crop((75, 0, 375, 300))
    size = CAT_BOX[2] - CAT_BOX[0]
    bg.paste(cat.resize((size, size), Image.BICUBIC), CAT_BOX[:2])
    return bg


def test_default_model_sees_a_cat_in_chelsea_and_explains_it_in_the_input_shape():
    model = get_model("efficientnet_lite0")
    x, _ = preprocess(open_image(ROOT / "examples/chelsea.png"), model.input_size, fit="crop")
    params = ExplainParams(window=32, stride=32, samples=2, target="top1")
    expl = explain(model, x, params, get_stats(), runtime=Runtime(batch_size=32, backend="torch"))
    assert expl.prediction[0]["class_index"] in CAT_CLASSES
    assert expl.relevance.shape == (1, 224, 224)
    assert np.isfinite(expl.relevance).all()
    assert np.abs(expl.relevance).max() > 0.01


def test_evidence_for_the_cat_lies_on_the_cat_not_on_the_astronaut():
    model = get_model("efficientnet_lite0")
    x, _ = preprocess(cat_on_astronaut(), model.input_size, fit="crop")
    params = ExplainParams(sampler="conditional", window=16, stride=16, samples=2,
                           target="top1", seed=0)
    expl = explain(model, x, params, get_stats(), runtime=Runtime(batch_size=32, backend="torch"))
    assert expl.prediction[0]["class_index"] in CAT_CLASSES
    rel = expl.relevance[0]
    inside = np.zeros_like(rel, dtype=bool)
    left, top, right, bottom = CAT_BOX
    inside[top:bottom, left:right] = True
    positive = np.clip(rel, 0, None)
    share = positive[inside].sum() / positive.sum()
    area = inside.mean()  # 0.33 of the image
    # Measure: the share of all positive evidence (bits) that falls on the cat's pixels.
    # Spread evenly it would equal the cat's area share (0.33); we require twice that.
    assert share > 2 * area, f"only {share:.2f} of the evidence is on the cat"
    assert rel[inside].mean() > rel[~inside].mean()
