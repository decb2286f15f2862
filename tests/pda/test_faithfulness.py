"""Faithfulness scores: hand-checked deletion/insertion curves, the box model's map beating
random block orders, seeds, batch sizes, and the passes the score costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda.document import faithfulness_summary, result_document
from pda.engine.explain import explain
from pda.engine.faithfulness import (
    auc,
    block_order,
    passes_needed,
    relevance_order,
    score,
    score_explanation,
    step_counts,
)
from pda.params import ExplainParams
from pda.runtime import Runtime
from tests.support.toys import ConvNet, LinearModel, box_case, random_stats, wrap


def _mean_red(batch: torch.Tensor) -> torch.Tensor:
    """A 'probability' we can follow by hand: the mean red value, one target."""
    return batch[:, 0].mean(dim=(1, 2))[:, None]  # (B, 1)


def _ramp() -> tuple[torch.Tensor, torch.Tensor]:
    """4 x 4 image whose red values are 0/15 .. 15/15 in raster order; the map says the
    brightest pixels matter most."""
    red = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 15
    x = torch.zeros(3, 4, 4)
    x[0] = red
    return x, red[None].clone()  # (3, 4, 4), (1, 4, 4)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_curves_and_aucs_match_the_hand_computation(batch_size):
    x, rel = _ramp()
    out, passes = score(_mean_red, x, rel, fill="grey", step=0.25, orders=2, block=2,
                        batch_size=batch_size)
    f = out[0]
    # mean red 0.5; deleting the top four (15+14+13+12)/15 = 3.6 and filling 4 x 0.5 = 2:
    # (8 - 3.6 + 2) / 16 = 0.4; then 11..8 (38/15): 0.36667; then 7..4 (22/15): 0.4; then 0.5
    assert f["curves"]["x"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert f["curves"]["deletion"] == pytest.approx([0.5, 0.4, 0.36667, 0.4, 0.5], abs=1e-4)
    # trapezoid: 0.25 * (0.5/2 + 0.4 + 0.36667 + 0.4 + 0.5/2) = 5/12
    assert f["deletion_auc"] == pytest.approx(5 / 12, abs=1e-6)
    # insertion from the grey canvas, brightest first: 0.5, 0.6, 0.63333, 0.6, 0.5 -> 7/12
    assert f["curves"]["insertion"] == pytest.approx([0.5, 0.6, 0.63333, 0.6, 0.5], abs=1e-4)
    assert f["insertion_auc"] == pytest.approx(7 / 12, abs=1e-6)
    assert f["protocol"]["curve_points"] == 5 and f["protocol"]["fill"] == "grey"
    # 2 shared end points + 3 interior points x 2 curves x (1 map + 2 random orders)
    assert passes == f["forward_passes"] == 2 + 3 * 2 * 3 == passes_needed(16, 1, 0.25, 2)


def test_baseline_is_the_mean_over_random_block_orders():
    x, rel = _ramp()
    f = score(_mean_red, x, rel, fill="grey", step=0.25, orders=3, block=2, seed=5)[0][0]
    # 2 x 2 blocks on a 4 x 4 image: one block per step, so each order's curve is literal
    red = x[0].numpy()
    expected = []
    for r in range(3):
        order = block_order(4, 4, 2, np.random.default_rng([5, r])).numpy()
        dele = [red.mean()]
        for i in range(1, 5):
            y = red.flatten().copy()
            y[order[: 4 * i]] = 0.5
            dele.append(y.mean())
        expected.append(auc(np.array(dele), [0, 4, 8, 12, 16]))
    assert f["baseline"]["deletion_auc"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert f["baseline"]["orders"] == 3


def test_order_is_relevance_descending_with_ties_in_raster_order():
    assert relevance_order(torch.zeros(2, 2)).tolist() == [0, 1, 2, 3]
    assert relevance_order(torch.tensor([[1.0, 2.0], [2.0, 0.0]])).tolist() == [1, 2, 0, 3]
    # blocks stay together, raster order inside; edge blocks are smaller
    order = block_order(3, 3, 2, np.random.default_rng(0)).tolist()
    assert sorted(order) == list(range(9))
    i = order.index(0)
    assert order[i:i + 4] == [0, 1, 3, 4]  # the top-left 2 x 2 block, in raster order
    j = order.index(8)
    assert order[j:j + 1] == [8]  # the bottom-right corner is a 1 x 1 block


def test_step_counts_cover_every_pixel_once():
    assert step_counts(16, 0.25) == [0, 4, 8, 12, 16]
    assert step_counts(10, 0.25) == [0, 3, 6, 9, 10]  # ceil(2.5) = 3 per step
    assert len(step_counts(224 * 224, 0.02)) == 51
    assert len(step_counts(224 * 224, 0.04)) == 26  # 2,008 a step: every other point of 2 %
    with pytest.raises(ValueError, match="step"):
        step_counts(16, 0.0)


@pytest.mark.parametrize("fill", ["blur", "grey"])
def test_the_box_models_map_beats_random_block_orders(fill):
    model, x = box_case()
    params = ExplainParams(sampler="constant", window=4, stride=2, target="0",
                           fill=(0.0, 0.0, 0.0), faithfulness=False)
    expl = explain(model, x, params, random_stats(),
                   runtime=Runtime(batch_size=32, backend="torch"))
    f = score_explanation(model, x, torch.from_numpy(expl.relevance), [0], fill=fill)[0][0]
    assert f["deletion_auc"] < f["baseline"]["deletion_auc"] - 0.05
    assert f["insertion_auc"] > f["baseline"]["insertion_auc"] + 0.05
    # the box is 64 of 1024 pixels (6.25 %): after 4 steps of 21 p(class 0) is at its floor
    dele = f["curves"]["deletion"]
    assert dele[4] == pytest.approx(dele[-1], abs=0.01) and dele[0] > dele[-1] + 0.3
    # an inverted map (least relevant first) deletes worse than the map
    worst = score_explanation(model, x, -torch.from_numpy(expl.relevance), [0], fill=fill)
    assert worst[0][0]["deletion_auc"] > f["deletion_auc"] + 0.3


def test_curve_end_points_are_the_softmax_probabilities_of_image_and_canvas():
    weight = torch.linspace(-1, 1, 64).reshape(8, 8)
    model = wrap(LinearModel(weight, bias=0.3), 8)
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    rel = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    out, _ = score_explanation(model, x, rel, [0, 1], fill="grey", step=0.25)
    p_x = torch.softmax(model(x[None]), 1)[0]
    p_grey = torch.softmax(model(torch.full((1, 3, 8, 8), 0.5)), 1)[0]
    for t in (0, 1):
        c = out[t]["curves"]
        assert c["deletion"][0] == c["insertion"][-1] == pytest.approx(float(p_x[t]), abs=1e-4)
        assert c["deletion"][-1] == c["insertion"][0] == pytest.approx(float(p_grey[t]),
                                                                      abs=1e-4)


def test_scores_repeat_for_a_seed_and_do_not_depend_on_the_batch_size():
    model, x = box_case()
    params = ExplainParams(sampler="marginal", window=8, stride=4, samples=2, target="top2",
                           seed=3)
    ea = explain(model, x, params, random_stats(), runtime=Runtime(batch_size=16, backend="torch"))
    a = ea.faithfulness
    b = explain(model, x, params, random_stats(),
                runtime=Runtime(batch_size=5, backend="torch")).faithfulness
    assert len(a) == 2 and ea.targets == [0, 1]
    for fa, fb in zip(a, b, strict=True):
        assert fa["deletion_auc"] == pytest.approx(fb["deletion_auc"], abs=1e-6)
        assert fa["baseline"] == pytest.approx(fb["baseline"], abs=1e-6)
        assert fa["curves"]["insertion"] == pytest.approx(fb["curves"]["insertion"], abs=1e-4)
    other = score_explanation(model, x, torch.zeros(1, 32, 32), [0], seed=4)[0][0]
    same = score_explanation(model, x, torch.zeros(1, 32, 32), [0], seed=3)[0][0]
    # the random orders depend on the seed alone, not on the map
    assert same["baseline"] == pytest.approx(a[0]["baseline"], abs=1e-6)
    assert other["baseline"]["deletion_auc"] != same["baseline"]["deletion_auc"]


def test_turning_the_score_off_saves_exactly_its_passes():
    model, x = box_case()
    on = ExplainParams(sampler="conditional", window=8, stride=8, samples=2, target="top2")
    off = on.model_copy(update={"faithfulness": False})
    stats = random_stats()
    e_on = explain(model, x, on, stats, runtime=Runtime(batch_size=16, backend="torch"))
    e_off = explain(model, x, off, stats, runtime=Runtime(batch_size=16, backend="torch"))
    # ceil(4 % of 1024) = 41 pixels a step: 26 points, 24 inner; 2 + 2 x 24 x (2 + 3 orders)
    extra = passes_needed(32 * 32, 2)
    assert extra == 242
    assert e_on.forward_passes - e_off.forward_passes == extra == e_on.faithfulness_passes
    assert e_off.forward_passes == 16 * 2 + 1 and e_off.faithfulness is None
    kw = dict(model_name="toy", input_size=(32, 32), image_size=(32, 32),
              crop_box=(0, 0, 32, 32), num_classes=2)
    doc_on = result_document(e_on, params=on, **kw)
    doc_off = result_document(e_off, params=off, **kw)
    assert all("faithfulness" in e for e in doc_on["explanations"])
    assert not any("faithfulness" in e for e in doc_off["explanations"])
    assert doc_on["stats"]["faithfulness_passes"] == extra
    assert doc_off["stats"]["faithfulness_passes"] == 0
    f = doc_on["explanations"][0]["faithfulness"]
    assert set(f) == {"deletion_auc", "insertion_auc", "baseline", "protocol", "curves",
                      "forward_passes"}
    assert len(f["curves"]["deletion"]) == f["protocol"]["curve_points"] == 26
    # the job resource's copy: the scores without the curves
    assert faithfulness_summary(f) == {
        "deletion_auc": f["deletion_auc"], "insertion_auc": f["insertion_auc"],
        "baseline": {"deletion_auc": f["baseline"]["deletion_auc"],
                     "insertion_auc": f["baseline"]["insertion_auc"]},
        "fill": "blur", "step": 0.04}


def test_hidden_layers_carry_no_score():
    model = wrap(ConvNet(), 16, classes=5)
    params = ExplainParams(sampler="constant", window=8, stride=8, target="top1",
                           layer="features.0")
    expl = explain(model, torch.rand(3, 16, 16), params, random_stats(),
                   runtime=Runtime(batch_size=8, backend="torch"))
    assert expl.faithfulness is None and expl.faithfulness_passes == 0
    assert expl.forward_passes == 4 + 1


def test_progress_counts_the_scores_passes_in_one_fixed_total():
    model, x = box_case()
    params = ExplainParams(sampler="marginal", window=8, stride=8, samples=2, target="top1")
    seen: list[tuple[int, int]] = []
    expl = explain(model, x, params, random_stats(),
                   runtime=Runtime(batch_size=16, backend="torch"),
                   progress=lambda d, t: seen.append((d, t)))
    # the sweep's total leaves out the unmodified image's pass (callers add it)
    assert {t for _, t in seen} == {expl.forward_passes - 1}
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1][0] == expl.forward_passes - 1 == 16 * 2 + expl.faithfulness_passes
