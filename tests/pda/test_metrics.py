"""The metric families of pda.tools.metrics and ROAD's imputation on inputs small enough
to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pda.tools import metrics as M
from pda.tools.road import linear_impute, noisy_linear_impute
from tests.support.toys import ConvNet, LinearModel, wrap

WEIGHT = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # logit 0 of a 2 x 2 linear model


def _logit0(model):
    return lambda b: model(b)[:, :1]  # (B, 1): the class-0 logit, linear in the pixels


def _zero_fill(img, removed):
    return torch.where(removed[:, None], torch.zeros_like(img)[None], img[None])


def test_curve_points_are_exact_fractions():
    assert M.fractions(0.25) == [0, 250, 500, 750, 1000]
    assert M.fractions(0.3) == [0, 300, 600, 900, 1000]
    with pytest.raises(Exception, match="step"):
        M.fractions(0.0)


def test_morf_and_lerf_curves_of_a_linear_model_by_hand():
    model = wrap(LinearModel(WEIGHT), 2)
    x = torch.ones(3, 2, 2)
    orders = M.morf_lerf_orders(WEIGHT)  # the map = the weights
    curves, passes = M.removal_curves(_logit0(model), x, orders, _zero_fill, 0.25)
    # MoRF removes the weights 4, 3, 2, 1: logit 10, 6, 3, 1, 0; LeRF 1, 2, 3, 4
    assert curves[0, :, 0].tolist() == pytest.approx([10, 6, 3, 1, 0])
    assert curves[1, :, 0].tolist() == pytest.approx([10, 9, 7, 4, 0])
    assert passes == 2 + 2 * 3  # shared end points, then 3 inner points per order
    base, _ = M.removal_curves(_logit0(model), x, [orders[1]], _zero_fill, 0.25)
    s = M.removal_scores(base, curves, 0.25)
    # trapezoids of width 1/4: (8 + 4.5 + 2 + 0.5) / 4 and (9.5 + 8 + 5.5 + 2) / 4
    assert s["morf"] == pytest.approx(3.75) and s["lerf"] == pytest.approx(6.25)
    assert s["srg"] == pytest.approx(2.5)
    assert s["random"] == pytest.approx(6.25) and s["morf_gap"] == pytest.approx(-2.5)


def test_road_imputes_the_neighbour_mean_by_hand():
    x = torch.zeros(1, 3, 3, dtype=torch.float64)
    x[0, 0, 1], x[0, 1, 0], x[0, 1, 1] = 1.0, 2.0, 5.0
    corner = torch.zeros(1, 3, 3, dtype=torch.bool)
    corner[0, 0, 0] = True
    y = linear_impute(x, corner)[0]
    # neighbours inside: right 1/6, below 1/6, diagonal 1/12 -> (2*1 + 2*2 + 5) / 5
    assert float(y[0, 0, 0]) == pytest.approx(2.2)
    assert torch.equal(y[0][~corner[0]], x[0][~corner[0]])  # known pixels untouched
    row = torch.tensor([[[0.0, 9.0, 9.0, 3.0]]], dtype=torch.float64)
    gap = torch.tensor([[[False, True, True, False]]])
    # p1 = (0 + p2) / 2 and p2 = (p1 + 3) / 2: linear interpolation, 1 and 2
    assert linear_impute(row, gap)[0, 0, 0].tolist() == pytest.approx([0, 1, 2, 3])
    everything = torch.ones(1, 1, 4, dtype=torch.bool)
    assert linear_impute(row, everything)[0, 0, 0].tolist() == (
        pytest.approx([5.25] * 4))  # (0 + 9 + 9 + 3) / 4


def test_road_noise_lands_on_the_imputed_pixels_only():
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    m = torch.zeros(2, 16, 16, dtype=torch.bool)
    m[0, 4:10, 4:10] = True
    m[1, :, :8] = True
    clean = linear_impute(x, m)
    noisy = noisy_linear_impute(x, m, torch.Generator().manual_seed(1))
    d = noisy - clean
    assert torch.all(d[~m[:, None].expand_as(d)] == 0)
    assert 0.005 < float(d[m[:, None].expand_as(d)].std()) < 0.02  # NOISE = 0.01
    again = noisy_linear_impute(x, m, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_faithfulness_correlation_by_hand():
    model = wrap(LinearModel(WEIGHT), 2)
    x = torch.ones(3, 2, 2)
    subsets = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 1]]],
                           dtype=torch.bool)
    # drops 1, 3, 4; a flat map sums to 1, 2, 1: Pearson = (1/3) / sqrt(2/3 * 42/9)
    r, passes = M.faithfulness_correlation(_logit0(model), x, torch.ones(2, 2), _zero_fill,
                                           subsets)
    assert r == pytest.approx(1 / math.sqrt(28)) and passes == 4
    # gradient x input of a linear model is exactly the drop: correlation 1, inverted -1
    many = M.correlation_subsets(2, 2, 8, 0.5, 1, seed=0)
    assert M.faithfulness_correlation(_logit0(model), x, WEIGHT, _zero_fill, many)[0] == (
        pytest.approx(1.0))
    assert M.faithfulness_correlation(_logit0(model), x, -WEIGHT, _zero_fill, many)[0] == (
        pytest.approx(-1.0))


def test_correlation_subsets_take_the_fraction_of_blocks():
    s = M.correlation_subsets(10, 12, 5, 0.25, 4, seed=3)
    assert s.shape == (5, 10, 12)
    blocks = s[:, ::4, ::4]  # one pixel per 4 x 4 block (3 x 3 blocks)
    assert blocks.flatten(1).sum(1).tolist() == [2] * 5  # round(0.25 * 9)
    assert torch.equal(s, M.correlation_subsets(10, 12, 5, 0.25, 4, seed=3))


def test_rank_correlations_by_hand():
    assert M.rankdata(np.array([3, 1, 3, 2])).tolist() == [3.5, 1, 3.5, 2]
    # 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert M.spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert M.pearson(np.ones(3), np.arange(3)) == 0.0


def test_randomisation_scores_of_same_flipped_and_unrelated_maps():
    a = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) - 0.5
    same = M.randomisation_scores(a, a)
    assert same["spearman"] == pytest.approx(1) and same["ssim"] == pytest.approx(1)
    flipped = M.randomisation_scores(a, -a)
    assert flipped["spearman"] == pytest.approx(-1)
    assert flipped["spearman_abs"] == pytest.approx(1) and flipped["ssim"] < 0
    other = M.randomisation_scores(a, torch.rand(16, 16) - 0.5)
    assert abs(other["spearman"]) < 0.3
    assert math.isnan(M.randomisation_scores(a[:4, :4], a[:4, :4])["ssim"])


def test_randomised_model_changes_only_a_copy_of_the_head():
    model = wrap(ConvNet(), 8, classes=5)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    r = M.randomised_model(model, seed=0)
    assert r.name == "toy+random-head" and r.module is not model.module
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, before[k])  # the original is untouched
    after = r.module.state_dict()
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert torch.equal(after["features.0.weight"], before["features.0.weight"])
    again = M.randomised_model(model, seed=0).module.state_dict()
    assert torch.equal(again["head.weight"], after["head.weight"])  # seeded


def test_gradient_saliency_of_a_linear_model_is_its_weight_pattern():
    model = wrap(LinearModel(WEIGHT), 2)
    g = M.gradient_saliency(model, torch.zeros(3, 2, 2), 0)
    # p0 = sigmoid(z), dp/dx_red = p (1 - p) w = w / 4 at z = 0; other channels 0
    assert g.flatten().tolist() == pytest.approx((WEIGHT / 4).flatten().tolist())


def test_random_map_is_piecewise_constant_and_seeded():
    m = M.random_map(10, 10, 4, seed=2)
    assert m.shape == (10, 10) and torch.equal(m, M.random_map(10, 10, 4, seed=2))
    assert len(torch.unique(m[:4, :4])) == 1 and len(torch.unique(m)) == 9



def test_road_scores_do_not_depend_on_what_was_scored_before():
    # common random numbers: each map's ROAD curves (and the baseline's) start the noise
    # stream afresh, so a configuration's score is the same first or third in a run
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(8, 8, generator=g)
    model = wrap(LinearModel(weight), 8)
    x = torch.rand(3, 8, 8, generator=g) * 0.5 + 0.25
    protocol = M.Protocol(fills=("road",), step=0.25, orders=2, block=4)
    other, mine = torch.randn(8, 8, generator=g), weight.clone()
    alone, _ = M.ImageScorer(_logit0(model), x, protocol).removal(mine)
    scorer = M.ImageScorer(_logit0(model), x, protocol)
    scorer.removal(other)
    after, _ = scorer.removal(mine)
    assert after == alone
    # one stream shared by both maps (the old behaviour) gives the second map other noise
    shared = M.make_fill("road", x, protocol.seed)
    orders = M.morf_lerf_orders(mine)
    M.removal_curves(_logit0(model), x, M.morf_lerf_orders(other), shared, 0.25)
    second, _ = M.removal_curves(_logit0(model), x, orders, shared, 0.25)
    fresh, _ = M.removal_curves(_logit0(model), x, orders, M.make_fill("road", x, 0), 0.25)
    assert not np.allclose(second, fresh)
    with pytest.raises(Exception, match="fill"):
        M.ImageScorer(_logit0(model), x, M.Protocol(fills=("nope",)))


def test_pixel_flipping_sets_pixels_to_black_in_pixel_space_by_hand():
    import dataclasses

    # the model normalises (x - 0.5) / 0.5: a white pixel reads 1, black -1, and "0 after
    # normalisation" would be grey 0.5; logit 0 = sum(weight * normalised red)
    model = dataclasses.replace(wrap(LinearModel(WEIGHT), 2), mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.ones(3, 2, 2)
    auc, curve, passes = M.pixel_flipping(_logit0(model), x, WEIGHT, 0.25)
    # the weights 4, 3, 2, 1 flip from +1 to -1 in turn: 10, 2, -4, -8, -10
    assert curve.tolist() == pytest.approx([10, 2, -4, -8, -10])
    # trapezoids of width 1/4: (12 - 2 - 12 - 18) / 8; a grey fill would give 3.75
    assert auc == pytest.approx(-2.5)
    assert passes == 5
    flipped, _, _ = M.pixel_flipping(_logit0(model), x, -WEIGHT, 0.25)  # least first
    assert flipped == pytest.approx(2.5)  # (18 + 12 + 2 - 12) / 8


def test_region_perturbation_ranks_regions_by_summed_relevance_by_hand():
    # 4 x 4 image of ones, 2 x 2 regions A B / C D with weights 1, 2, 3, 4 per pixel
    weight = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    model = wrap(LinearModel(weight), 4)
    x = torch.ones(3, 4, 4)
    # relevance: A one pixel of 10 (sum 10, the largest pixel), B all 3 (sum 12), C all 1
    # (4), D all 2 (8): by sum B, A, D, C (by the largest pixel it would be A first)
    rel = torch.tensor([[10.0, 0, 3, 3], [0, 0, 3, 3], [1, 1, 2, 2], [1, 1, 2, 2]])
    patch, order = M.region_order(rel, 2)
    assert order.tolist() == [1, 0, 3, 2]
    assert patch[3, 0] == 2 and patch[0, 3] == 1
    aopc, drops, passes = M.region_perturbation(_logit0(model), x, rel, 2, 3, batch_size=2)
    # f(x) = 40; black B drops 8, then A 4 more (12), then D 16 more (28)
    assert drops.tolist() == pytest.approx([0, 8, 12, 28])
    assert aopc == pytest.approx(12.0)  # (0 + 8 + 12 + 28) / 4, k = 0 included
    assert passes == 4
    every, drops, passes = M.region_perturbation(_logit0(model), x, rel, 2, 99)
    assert drops.tolist() == pytest.approx([0, 8, 12, 28, 40]) and passes == 5  # L = 4
    assert every == pytest.approx(17.6)
    # edge regions are smaller: 3 x 3 on 4 x 4 gives 2 x 2 regions of 9, 3, 3 and 1 pixels
    patch, _ = M.region_order(rel, 3)
    assert torch.bincount(patch.flatten()).tolist() == [9, 3, 3, 1]
