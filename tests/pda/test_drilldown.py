"""Approximate drill-down: exact where it refines, counted passes, an honest error estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda.document import result_document
from pda.engine.drilldown.check import estimate_error
from pda.engine.drilldown.refine import (
    SweepScores,
    axis_nodes,
    cell_importance,
    drilldown,
    interpolate,
    refine_cells,
)
from pda.engine.drilldown.ssim import data_range, ssim, ssim_map
from pda.engine.explain import explain
from pda.engine.geometry import window_positions, windows_to_pixels
from pda.engine.samplers import make_sampler
from pda.engine.sweep import Forward
from pda.errors import InvalidParameterError
from pda.grid import grid_shape
from pda.params import ExplainParams, plan
from pda.runtime import Runtime
from pda.tools.drilldown_bench import TableScores, record_samples
from tests.support.toys import ConvNet, LinearModel, RegionModel, random_stats, wrap

SAMPLERS = ["constant", "marginal", "conditional"]


class _Float64(torch.nn.Module):
    """Runs a toy in float64, so batch composition cannot move its float32 outputs."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.double())


def _image(size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("stride", "coarse", "batch"), [(1, 4, 16), (2, 6, 7), (1, 3, 64)])
def test_refining_everything_gives_the_exact_map(sampler, stride, coarse, batch):
    size = 16
    model = wrap(_Float64(ConvNet(classes=4)), size, classes=4)
    x = _image(size)
    base = dict(sampler=sampler, window=4, stride=stride, samples=3, target="top2", seed=5)
    exact = explain(model, x, ExplainParams(**base), random_stats(),
                    runtime=Runtime(batch_size=batch, backend="torch"))
    drill = explain(model, x, ExplainParams(**base, drilldown=1.0, coarse_stride=coarse),
                    random_stats(), runtime=Runtime(batch_size=batch, backend="torch"))
    peak = np.abs(exact.relevance).max()
    assert peak > 0
    assert np.abs(drill.relevance - exact.relevance).max() <= 1e-6 * peak
    approx = drill.approximation
    assert approx["windows"]["interpolated"] == 0
    assert approx["error"]["ssim"] == 1.0 and approx["error"]["max_abs_diff"] == 0.0
    assert approx["error"]["sample_windows"] == 0  # nothing left to check


def _overlapping(size: int, k: int, stride: int, box: tuple[slice, slice]) -> torch.Tensor:
    """(n_w,) bool: windows that overlap the box (brute force)."""
    gh, gw = grid_shape(size, size, k, stride)
    r, c = box
    out = torch.zeros(gh, gw, dtype=torch.bool)
    for i in range(gh):
        for j in range(gw):
            y, x0 = i * stride, j * stride
            out[i, j] = y < r.stop and y + k > r.start and x0 < c.stop and x0 + k > c.start
    return out.reshape(-1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_refined_windows_cover_the_evidence_box_and_match_the_exact_map_there(sampler):
    size, k, box = 36, 4, (slice(14, 20), slice(20, 25))
    model = wrap(RegionModel(box), size)
    x = _image(size) * 0.5
    x[0, box[0], box[1]] = 1.0  # the evidence for class 0: a bright red box
    base = dict(sampler=sampler, window=k, stride=1, samples=3, target="0",
                fill=(0.0, 0.0, 0.0))
    exact = explain(model, x, ExplainParams(**base), random_stats(),
                    runtime=Runtime(batch_size=32, backend="torch"))
    # the box's windows span 9 x 8 of the 33 x 33 fine grid: at most 9 of 64 cells
    drill = explain(model, x, ExplainParams(**base, drilldown=0.15, coarse_stride=4),
                    random_stats(), runtime=Runtime(batch_size=32, backend="torch"))
    approx = drill.approximation
    assert approx["windows"]["refined"] < 0.25 * approx["windows"]["total"]
    # the same drill-down by hand, to see which windows it computed
    smp = make_sampler(sampler, x, k, window_positions(size, size, k, 1), random_stats(),
                       fill=(0.0, 0.0, 0.0))

    def readout(b: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(b).float(), 1)[:, :1]

    fn = SweepScores(Forward(readout, batch_size=32), x, smp, window=k, stride=1, samples=3,
                     log_odds=True, num_classes=2, seed=0)
    d = drilldown(fn, size, size, k, 1, coarse_stride=4, fraction=0.15)
    assert d.computed[_overlapping(size, k, 1, box)].all()
    pix, _ = windows_to_pixels(d.scores, size, size, k, 1)
    assert np.allclose(pix[0].numpy(), drill.relevance[0], atol=1e-6)
    r, c = box
    assert np.abs(drill.relevance[0][r, c] - exact.relevance[0][r, c]).max() <= 1e-6
    assert (exact.relevance[0][r, c] > 0.05).all()
    # outside the windows touching the box both maps are exactly zero
    touched, _ = windows_to_pixels(_overlapping(size, k, 1, box)[:, None].double(), size, size,
                                   k, 1)
    far = touched[0].numpy() == 0
    assert np.abs(drill.relevance[0][far]).max() == 0 and np.abs(exact.relevance[0][far]).max() == 0


class _Counting:
    def __init__(self, model) -> None:
        self.model, self.rows = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        self.rows += len(b)
        return self.model(b)


@pytest.mark.parametrize("sampler", ["constant", "conditional"])
def test_forward_passes_are_coarse_plus_refined_plus_check_counted_exactly(sampler):
    size = 30
    counting = _Counting(wrap(ConvNet(classes=3), size, classes=3))
    params = ExplainParams(sampler=sampler, window=4, stride=1, samples=2, target="top2",
                           drilldown=0.1, coarse_stride=4, faithfulness=False)
    expl = explain(counting, _image(size), params, random_stats(),
                   runtime=Runtime(batch_size=16, backend="torch"))
    a = expl.approximation
    per = 1 if sampler == "constant" else 2
    w = a["windows"]
    stages = (w["coarse"] > 0) + (w["refined"] > 0) + (w["check"] > 0)
    used = (w["coarse"] + w["refined"] + w["check"]) * per + stages
    # the model also ran once for the prediction shown with the result
    assert counting.rows - 1 == expl.forward_passes == a["forward_passes"] == used
    assert a["exact_forward_passes"] == 27 * 27 * per + 1 == plan(params.model_copy(
        update={"drilldown": None}), counting.input_size)["forward_passes"]
    assert a["forward_passes"] <= plan(params, counting.input_size)["forward_passes"]
    assert w["coarse"] == 8 * 8  # nodes 0, 4, ..., 24 and 26 on each axis
    assert w["interpolated"] == 27 * 27 - w["coarse"] - w["refined"]
    assert a["error"]["forward_passes"] == a["stage_passes"]["check"]


def test_error_estimate_is_repeatable_for_a_seed_and_independent_of_batch_size():
    size = 28
    model = wrap(_Float64(ConvNet(classes=3)), size, classes=3)
    params = ExplainParams(sampler="conditional", window=4, stride=1, samples=2,
                           target="top2", drilldown=0.1, coarse_stride=4, seed=3)
    docs = [explain(model, _image(size), params, random_stats(),
                    runtime=Runtime(batch_size=bs, backend="torch"))
            .approximation for bs in (16, 16, 5)]
    assert docs[0] == docs[1]
    e0, e2 = docs[0]["error"], docs[2]["error"]
    assert e0["tiles"] == e2["tiles"] and e0["sample_windows"] == e2["sample_windows"]
    assert e0["ssim"] == pytest.approx(e2["ssim"], abs=1e-9)
    assert 0 < e0["sample_windows"] and e0["ssim"] < 1


def _table_fn(scores: torch.Tensor):
    def fn(ids: torch.Tensor) -> torch.Tensor:
        return scores[ids]
    return fn


def _smooth_scores(gh: int, gw: int, seed: int) -> torch.Tensor:
    """(gh*gw, 2) window scores: two Gaussian bumps on a gentle slope, plus noise."""
    g = torch.Generator().manual_seed(seed)
    i, j = torch.meshgrid(torch.arange(gh).double(), torch.arange(gw).double(), indexing="ij")
    bump = torch.exp(-((i - 0.3 * gh) ** 2 + (j - 0.6 * gw) ** 2) / 20)
    bump2 = -0.6 * torch.exp(-((i - 0.7 * gh) ** 2 + (j - 0.3 * gw) ** 2) / 30)
    noise = 0.03 * torch.randn(gh, gw, generator=g, dtype=torch.float64)
    a = bump + bump2 + 0.002 * i + noise
    return torch.stack([a, 0.5 * a.T.contiguous() if gh == gw else a], -1).reshape(-1, 2)


def test_estimate_is_exact_when_every_uncertain_tile_is_swept():
    H = W = 60
    k, s = 6, 1
    gh, gw = grid_shape(H, W, k, s)
    truth = _smooth_scores(gh, gw, 0)
    d = drilldown(_table_fn(truth), H, W, k, s, coarse_stride=4, fraction=0.1,
                  check={"tile": 8, "targeted": 10_000, "draws": 0})
    approx, _ = windows_to_pixels(d.scores, H, W, k, s)
    exact, _ = windows_to_pixels(truth, H, W, k, s)
    true = ssim_map(approx, exact, data_range(approx)).flatten(1).mean(1)  # the estimator's L
    assert d.error["tiles"]["sampled_stratum"] == 0
    assert [t["ssim"] for t in d.error["per_target"]] == pytest.approx(true.tolist(), abs=1e-12)
    assert d.error["ssim_ci95"][0] == d.error["ssim_ci95"][1] == d.error["ssim"]
    assert d.error["max_abs_diff"] == pytest.approx(float((approx - exact).abs().max()))
    assert d.error["ssim"] < 0.999  # there was something to estimate


def test_estimated_ssim_is_within_tolerance_of_the_true_ssim():
    """Paper geometry (224 px, window 10, stride 1) on a synthetic window-score grid: over
    12 estimator seeds the default check (8 pixel draws, 2 targeted, about 6% of the exact
    sweep) lands within 0.02 of the true SSIM on average and 0.08 at worst, and its 95%
    interval holds the truth at least 3 times in 4 (heavy-tailed local deficits: a few
    pixels near strong edges and the image border carry most of the SSIM loss)."""
    H = W = 224
    k, s = 10, 1
    gh, gw = grid_shape(H, W, k, s)
    truth = _smooth_scores(gh, gw, 1)
    exact, _ = windows_to_pixels(truth, H, W, k, s)
    errs, hits = [], 0
    for seed in range(12):
        d = drilldown(_table_fn(truth), H, W, k, s, coarse_stride=4, fraction=0.1, seed=seed)
        approx, _ = windows_to_pixels(d.scores, H, W, k, s)
        true = float(ssim(approx, exact).min())
        errs.append(abs(d.error["ssim"] - true))
        lo, hi = d.error["ssim_ci95"]
        hits += lo <= true <= hi
        assert d.check_windows < 0.08 * gh * gw
    assert 0.9 < true < 0.99  # an approximation worth checking
    assert sum(errs) / len(errs) < 0.02 and max(errs) < 0.08
    assert hits >= 9


def test_coarse_sweep_alone_is_exact_when_window_scores_vary_linearly():
    """Logit differences of a linear model under a constant fill are window sums of a
    linear ramp: linear in the window position, so bilinear interpolation is exact."""
    size, k = 20, 4
    ramp = torch.arange(size, dtype=torch.float32)
    weight = (0.1 * ramp[:, None] - 0.05 * ramp[None, :]) / size  # (H, W)
    model = wrap(LinearModel(weight), size)
    x = torch.full((3, size, size), 0.5)
    base = dict(sampler="constant", window=k, stride=1, target="0", layer="logits",
                fill=(0.0, 0.0, 0.0))
    exact = explain(model, x, ExplainParams(**base), random_stats(),
                    runtime=Runtime(backend="torch"))
    drill = explain(model, x, ExplainParams(**base, drilldown=0.0, coarse_stride=4),
                    random_stats(), runtime=Runtime(backend="torch"))
    w = drill.approximation["windows"]
    assert w["refined"] == 0 and w["coarse"] == 5 * 5 < 17 * 17
    assert np.allclose(drill.relevance, exact.relevance, atol=1e-6)


def test_interpolation_is_exact_at_the_coarse_nodes_and_between_for_a_plane():
    rows, cols = axis_nodes(11, 4), axis_nodes(7, 4)
    assert rows.tolist() == [0, 4, 8, 10] and cols.tolist() == [0, 4, 6]
    plane = lambda i, j: 2.0 * i - 3.0 * j + 1  # noqa: E731
    coarse = plane(rows[:, None].double(), cols[None, :].double())[..., None]  # (4, 3, 1)
    fine = interpolate(coarse, rows, cols, 11, 7)[..., 0]
    i, j = torch.meshgrid(torch.arange(11).double(), torch.arange(7).double(), indexing="ij")
    assert torch.allclose(fine, plane(i, j))
    nearest = interpolate(coarse, rows, cols, 11, 7, "nearest")[..., 0]
    assert nearest[1, 1] == plane(0, 0) and nearest[3, 3] == plane(4, 4)


def test_refinement_takes_the_top_cells_and_their_neighbourhood():
    imp = torch.zeros(6, 6, dtype=torch.float64)
    imp[2, 3], imp[5, 0] = 1.0, 0.5
    ring = refine_cells(imp, fraction=9 / 36, margin=1)
    want = torch.zeros(6, 6, dtype=torch.bool)
    want[1:4, 2:5] = True  # the strong cell and the 8 around it
    assert torch.equal(ring, want)
    assert refine_cells(imp, fraction=2 / 36, margin=0).nonzero().tolist() == [[2, 3], [5, 0]]
    assert not refine_cells(imp, fraction=0.0, margin=1).any()
    assert refine_cells(imp, fraction=1.0, margin=1).all()


def test_cells_are_ranked_by_the_most_relevant_target_at_its_own_scale():
    coarse = torch.zeros(3, 3, 2, dtype=torch.float64)  # (nr, nc, T): 2 x 2 cells
    coarse[0, 0, 0] = 10.0  # target 0: strong top-left
    coarse[2, 2, 1] = -0.1  # target 1: weak in absolute terms, its own maximum
    imp = cell_importance(coarse)
    assert imp[0, 0] == 1.0 and imp[1, 1] == 1.0 and imp[0, 1] == 0.0
    spread = cell_importance(coarse, "variation")
    assert spread[1, 1] == 1.0 and spread[0, 1] == 0.0


def test_ssim_of_constant_maps_matches_the_formula():
    a = torch.full((1, 12, 12), 0.5, dtype=torch.float64)
    b = torch.full((1, 12, 12), 0.3, dtype=torch.float64)
    L = data_range(b)  # 0.6
    c1 = (0.01 * 0.6) ** 2
    want = (2 * 0.5 * 0.3 + c1) / (0.5**2 + 0.3**2 + c1)  # no variance: luminance term only
    assert float(ssim_map(a, b, L).mean()) == pytest.approx(want, rel=1e-9)
    assert float(ssim(b, b)) == 1.0


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 40, 37, generator=g, dtype=torch.float64).cumsum(1)
    b = a + 0.5 * torch.randn(1, 40, 37, generator=g, dtype=torch.float64)
    want = skm.structural_similarity(b[0].numpy(), a[0].numpy(), data_range=float(data_range(a)),
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert float(ssim(b, a)) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(("stride", "coarse", "fraction", "field"), [
    (2, 3, 0.1, "multiple of the stride"), (4, 2, 0.1, "multiple of the stride"),
    (2, 4, 1.5, "less than or equal to 1"), (1, 0, 0.1, "greater than or equal to 1")])
def test_bad_drilldown_parameters_are_refused(stride, coarse, fraction, field):
    with pytest.raises(ValueError, match=field):
        ExplainParams(window=4, stride=stride, drilldown=fraction, coarse_stride=coarse)
    with pytest.raises(InvalidParameterError, match="multiple"):
        drilldown(lambda ids: ids, 20, 20, 4, 2, coarse_stride=5, fraction=0.1)


def test_result_document_reports_the_approximation():
    size = 24
    model = wrap(ConvNet(classes=3), size, classes=3)
    params = ExplainParams(sampler="constant", window=4, stride=1, target="top1",
                           drilldown=0.1, faithfulness=False)
    expl = explain(model, _image(size), params, random_stats(), runtime=Runtime(backend="torch"))
    doc = result_document(expl, model_name="toy", input_size=(size, size),
                          image_size=(size, size), crop_box=(0, 0, size, size), params=params,
                          num_classes=3)
    a = doc["approximation"]
    assert a["mode"] == "drilldown" and a["coarse_stride"] == 4 and a["fraction"] == 0.1
    # a 24 x 24 toy is smaller than the check's tiles: only the accounting is checked here
    assert doc["stats"]["forward_passes"] == a["forward_passes"] == sum(
        a["stage_passes"].values())
    assert a["exact_forward_passes"] == 21 * 21 + 1
    assert set(a["error"]) >= {"ssim", "ssim_ci95", "max_abs_diff", "sample_windows", "method",
                               "forward_passes", "tiles", "per_target"}
    plain = result_document(explain(model, _image(size), params.model_copy(
        update={"drilldown": None}), random_stats(), runtime=Runtime(backend="torch")),
        model_name="toy",
        input_size=(size, size),
        image_size=(size, size), crop_box=(0, 0, size, size), params=params, num_classes=3)
    assert "approximation" not in plain


def test_estimate_error_needs_no_windows_when_all_tiles_are_known():
    H = W = 30
    gh, gw = grid_shape(H, W, 4, 1)
    scores = torch.randn(gh * gw, 1, dtype=torch.float64)
    doc, n = estimate_error(lambda ids: pytest.fail("swept"), scores,
                            torch.ones(gh * gw, dtype=torch.bool),
                            torch.zeros(gh * gw, dtype=torch.float64), H, W, 4, 1)
    assert n == 0 and doc["ssim"] == 1.0 and doc["tiles"]["known"] == doc["tiles"]["total"]


@pytest.mark.slow
def test_real_model_drilldown_refining_everything_equals_the_exact_map():
    """efficientnet_lite0 on chelsea.png at a coarse geometry (169 windows x 2 samples).

    Window 32, whose conditional statistics ship with the package: window 56 had them
    fitted at run time, 11 minutes of this test on a 2-core machine."""
    from pathlib import Path

    from pda.engine.inputs import preprocess
    from pda.engine.stats import get_stats
    from pda.images import open_image
    from pda.models.registry import get_model

    model = get_model("efficientnet_lite0")
    root = Path(__file__).resolve().parents[2]
    x, _ = preprocess(open_image(root / "examples/chelsea.png"), model.input_size, fit="crop")
    base = dict(sampler="conditional", window=32, stride=16, samples=2, target="top2")
    exact = explain(model, x, ExplainParams(**base), get_stats(),
                    runtime=Runtime(batch_size=32, backend="torch"))
    drill = explain(model, x, ExplainParams(**base, drilldown=1.0, coarse_stride=32),
                    get_stats(), runtime=Runtime(batch_size=32, backend="torch"))
    peak = np.abs(exact.relevance).max()
    assert peak > 0.01
    # float32 forward passes in other batch compositions: equal to 1e-4 of the peak
    assert np.abs(drill.relevance - exact.relevance).max() <= 1e-4 * peak
    assert drill.approximation["windows"]["coarse"] == 7 * 7  # grid rows 0, 2, ..., 12


def test_bench_replay_from_an_exact_table_equals_a_real_drilldown():
    """The measurements replay drill-downs from one recorded exact sweep: that must give
    the same windows, scores and error estimate as running the drill-down itself."""
    size, k, S = 30, 4, 2
    model = wrap(_Float64(ConvNet(classes=3)), size, classes=3)
    x = _image(size)
    smp = make_sampler("conditional", x, k, window_positions(size, size, k, 1), random_stats())
    idx = torch.tensor([0, 2])

    def readout(b: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(b).float(), 1)[:, idx]  # (B, T)

    gh, gw = grid_shape(size, size, k, 1)
    table = {"base": readout(x[None])[0].double(), "num_classes": 3,
             "samples": record_samples(readout, x, smp, torch.arange(gh * gw), window=k,
                                       stride=1, samples=S, batch_size=16, seed=4)}
    kw = dict(coarse_stride=4, fraction=0.2, seed=1, check={"draws": 4, "targeted": 1})
    replay = drilldown(TableScores(table, S), size, size, k, 1, **kw)
    real = drilldown(SweepScores(Forward(readout, batch_size=7), x, smp, window=k, stride=1,
                                 samples=S, log_odds=True, num_classes=3, seed=4),
                     size, size, k, 1, **kw)
    assert torch.equal(replay.computed, real.computed)
    assert torch.allclose(replay.scores, real.scores, atol=1e-9)
    assert replay.check_windows == real.check_windows > 0
    assert replay.error["ssim"] == pytest.approx(real.error["ssim"], abs=1e-9)
