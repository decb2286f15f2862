"""The sweep's numbers: hand-computed weights of evidence, zeros, signs, batching, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pda.engine.explain import explain
from pda.engine.geometry import window_positions, windows_to_pixels
from pda.engine.samplers import make_sampler
from pda.engine.sweep import Forward, laplace, relevance_maps, run_sweep
from pda.params import ExplainParams
from pda.runtime import Runtime
from tests.support.toys import ConvNet, LinearModel, RegionModel, random_stats, wrap

SAMPLERS = ["constant", "marginal", "conditional"]


def _touch_mask(size: int, k: int, stride: int, region: tuple[slice, slice]) -> np.ndarray:
    """Pixels covered by at least one window that overlaps the region (brute force)."""
    r, c = region
    mask = np.zeros((size, size), bool)
    for i in range(0, size - k + 1, stride):
        for j in range(0, size - k + 1, stride):
            if i < r.stop and i + k > r.start and j < c.stop and j + k > c.start:
                mask[i : i + k, j : j + k] = True
    return mask


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_relevance_is_zero_where_no_window_touches_the_region(sampler):
    size, k, stride = 24, 4, 2
    region = (slice(8, 12), slice(14, 18))
    model = wrap(RegionModel(region), size)
    x = torch.full((3, size, size), 0.2)
    x[0, region[0], region[1]] = 1.0  # the evidence for class 0: a bright red square
    params = ExplainParams(sampler=sampler, window=k, stride=stride, samples=4,
                           target="0", fill=(0.0, 0.0, 0.0))
    expl = explain(model, x, params, random_stats(),
                   runtime=Runtime(batch_size=16, backend="torch"))
    rel = expl.relevance[0]
    touch = _touch_mask(size, k, stride, region)
    assert np.abs(rel[~touch]).max() <= 1e-9
    # removing the bright region lowers p(class 0): evidence FOR class 0 on the region
    r, c = region
    assert (rel[r, c] > 0.05).all()
    assert expl.unit == "bits"


def _we(p_full: float, p_without: float, n: int, k: int) -> float:
    lap = lambda p: (p * n + 1) / (n + k)  # noqa: E731
    odds = lambda p: math.log2(lap(p)) - math.log2(1 - lap(p))  # noqa: E731
    return odds(p_full) - odds(p_without)


def test_constant_sampler_weight_of_evidence_matches_hand_computation():
    size, k, fill = 4, 2, 0.25
    weight = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 8 - 1  # (4, 4)
    model = wrap(LinearModel(weight, bias=0.3), size)
    x = torch.linspace(0, 1, 48).reshape(3, 4, 4)
    params = ExplainParams(sampler="constant", window=k, stride=1, samples=3, target="0",
                           fill=(fill, fill, fill), train_size=1000)
    expl = explain(model, x, params, random_stats(), runtime=Runtime(batch_size=5, backend="torch"))

    def p0(img: torch.Tensor) -> float:  # sigmoid of logit 0 against logit 1 = 0
        return 1 / (1 + math.exp(-float((img[0] * weight).sum() + 0.3)))

    full = p0(x)
    win_we = {}
    for i in range(3):
        for j in range(3):
            xw = x.clone()
            xw[:, i : i + k, j : j + k] = fill
            win_we[i, j] = _we(full, p0(xw), 1000, 2)
    for i in range(4):
        for j in range(4):
            covering = [win_we[a, b] for (a, b) in win_we if a <= i < a + k and b <= j < b + k]
            assert expl.relevance[0, i, j] == pytest.approx(np.mean(covering), abs=1e-5)
    # the corner pixel is covered by one window only: its value is that window's WE
    assert expl.relevance[0, 0, 0] == pytest.approx(win_we[0, 0], abs=1e-5)
    assert expl.relevance[0, 1, 1] == pytest.approx(np.mean(list(
        win_we[a, b] for a in (0, 1) for b in (0, 1))), abs=1e-5)
    # constant sampler is deterministic: one pass per window, plus the unmodified image
    assert expl.forward_passes - expl.faithfulness_passes == 9 + 1


def test_laplace_correction_keeps_saturated_probabilities_finite():
    n, k = 100_000, 1000
    assert float(laplace(torch.tensor(1.0), n, k)) == pytest.approx((n + 1) / (n + k))
    assert float(laplace(torch.tensor(0.0), n, k)) == pytest.approx(1 / (n + k))
    # a window that drives p from 1 (saturated) to 1/2: WE = log2((N+1)/(K-1)) - 0
    size = 4
    region = (slice(0, 2), slice(0, 2))
    model = wrap(RegionModel(region, gain=2000.0), size)
    x = torch.ones(3, size, size)
    expl = explain(model, x, ExplainParams(sampler="constant", window=2, stride=2,
                                           target="0", fill=(0, 0, 0), train_size=n),
                   random_stats(), runtime=Runtime(batch_size=4, backend="torch"))
    expected = math.log2((n + 1) / (2 - 1))  # K = 2 classes for this model
    assert expl.relevance[0, 0, 0] == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(expl.relevance).all()


def test_logits_layer_reports_activation_difference_without_log_odds():
    size, k = 6, 3
    weight = torch.ones(size, size)
    model = wrap(LinearModel(weight), size)
    x = torch.full((3, size, size), 0.75)
    expl = explain(model, x, ExplainParams(sampler="constant", window=k, stride=3,
                                           target="0", layer="logits", fill=(0.25, 0, 0)),
                   random_stats(), runtime=Runtime(batch_size=3, backend="torch"))
    # each window lowers the logit by k*k*(0.75 - 0.25) = 4.5
    assert expl.unit == "activation"
    np.testing.assert_allclose(expl.relevance[0], 4.5, atol=1e-6)


def test_hidden_layer_gives_one_map_per_channel_in_activation_units():
    model = wrap(ConvNet(), 12, classes=5)
    x = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(1))
    expl = explain(model, x, ExplainParams(sampler="constant", window=4, stride=2,
                                           layer="features.3", target="0,5,7"),
                   random_stats(), runtime=Runtime(batch_size=8, backend="torch"))
    assert expl.relevance.shape == (3, 12, 12)
    assert expl.labels == ["features.3[0]", "features.3[5]", "features.3[7]"]
    assert expl.unit == "activation"
    # direct check for channel 5 and the top-left window (the corner pixel's only one)
    feats = model.module.features
    fill = torch.tensor(random_stats().mean, dtype=torch.float32)[:, None, None]
    xw = x.clone()
    xw[:, :4, :4] = fill
    with torch.no_grad():
        base = feats(x[None])[0, 5].mean()
        without = feats(xw[None])[0, 5].mean()
    assert expl.relevance[1, 0, 0] == pytest.approx(float(base - without), abs=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_result_does_not_depend_on_the_batch_size(sampler):
    model = wrap(ConvNet(), 16, classes=5)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    params = ExplainParams(sampler=sampler, window=4, stride=2, samples=5, target="top2", seed=3)
    stats = random_stats()
    # float32 convolutions differ in the last bits between batch sizes (oneDNN picks
    # kernels by shape); a batching bug would move values by ~1e-2, not 1e-6
    maps = [explain(model, x, params, stats,
                    runtime=Runtime(batch_size=b, backend="torch")).relevance
            for b in (1, 7, 64)]
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps[0], maps[2], rtol=1e-4, atol=1e-5)
    assert np.abs(maps[0]).max() > 1e-4  # not trivially zero


def test_same_seed_repeats_and_another_seed_differs():
    model = wrap(ConvNet(), 16, classes=5)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    stats = random_stats()
    run = lambda seed: explain(  # noqa: E731
        model, x, ExplainParams(sampler="conditional", window=4, stride=2, samples=3,
                                target="0", seed=seed), stats,
        runtime=Runtime(batch_size=8, backend="torch")).relevance
    np.testing.assert_array_equal(run(11), run(11))
    assert np.abs(run(11) - run(12)).max() > 1e-4


def test_uncovered_pixels_are_zero_and_counted():
    scores = torch.ones(4, 1, dtype=torch.float64)  # 2x2 grid of windows on a 7x7 image
    mean, counts = windows_to_pixels(scores, 7, 7, 3, 3)
    assert counts[6].sum() == 0 and counts[:, 6].sum() == 0
    assert int((counts == 0).sum()) == 13
    assert mean[0, 6, 6] == 0 and mean[0, 0, 0] == 1
    assert window_positions(7, 7, 3, 3).tolist() == [[0, 0], [0, 3], [3, 0], [3, 3]]


def test_averaging_happens_before_the_log_odds():
    # samples giving p = 0.875 and 0.375 average to 0.625 = p_full, so WE must be 0;
    # averaging log-odds instead would give about 0.3 bits
    x = torch.zeros(3, 4, 4)
    calls = {"n": 0}

    class Alternating:
        deterministic = False

        def sample(self, ids, samples, generator):
            return torch.zeros(len(ids), samples, 3, 4, 4)

    def readout(b):
        out = []
        for _ in range(len(b)):
            if calls["n"] == 0:
                out.append(0.625)
            else:
                out.append(0.875 if calls["n"] % 2 else 0.375)
            calls["n"] += 1
        return torch.tensor(out)[:, None]

    sweep = run_sweep(Forward(readout, batch_size=1), x, Alternating(), window=4, stride=1,
                      samples=2)
    rel, _ = relevance_maps(sweep, 4, 4, 4, 1, log_odds=True, num_classes=2)
    assert float(rel.abs().max()) == pytest.approx(0.0, abs=1e-12)


def test_marginal_samples_come_from_the_same_place_in_reference_images():
    stats = random_stats(n=5, side=16)
    x = torch.zeros(3, 16, 16)
    pos = window_positions(16, 16, 4, 4)
    sampler = make_sampler("marginal", x, 4, pos, stats)
    refs = torch.from_numpy(stats.images).permute(0, 3, 1, 2).float() / 255
    out = sampler.sample(torch.tensor([5, 10]), 6, torch.Generator().manual_seed(0))
    assert out.shape == (2, 6, 3, 4, 4)
    for b, w in enumerate([5, 10]):
        i, j = pos[w].tolist()
        cands = refs[:, :, i : i + 4, j : j + 4]
        for s in range(6):
            assert any(torch.allclose(out[b, s], c) for c in cands)


def test_fixed_batch_padding_does_not_change_the_result():
    # fixed_batch pads the base pass and the last batch with the unmodified image
    model = wrap(ConvNet(), 16, classes=5)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(4))
    stats = random_stats()
    pos = window_positions(16, 16, 4, 2)
    sampler = make_sampler("conditional", x, 4, pos, stats)

    def readout(b):
        return torch.softmax(model(b), 1)[:, :2]

    kw = dict(window=4, stride=2, samples=3, seed=5)
    plain = run_sweep(Forward(readout, batch_size=64), x, sampler, **kw)
    padded = run_sweep(Forward(readout, batch_size=10, fixed_batch=True), x, sampler, **kw)
    assert 49 * 3 % 10 != 0  # the last batch really is padded
    torch.testing.assert_close(padded.window_means, plain.window_means, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(padded.base, plain.base, rtol=1e-5, atol=1e-7)


def test_compile_falls_back_to_eager_when_torch_compile_fails(monkeypatch):
    model = wrap(ConvNet(), 12, classes=5)

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    x = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(1))
    params = ExplainParams(sampler="constant", window=4, stride=4, target="0")
    eager = explain(model, x, params, random_stats(),
                    runtime=Runtime(batch_size=4, backend="torch")).relevance
    expl = explain(model, x, params, random_stats(),
                   runtime=Runtime(batch_size=4, backend="compile"))
    assert expl.runtime["backend"] == "torch"  # what ran: compiling failed, eager did
    fallback = expl.relevance
    # equal up to float32 batch-shape noise (the padded base pass runs at batch 4)
    np.testing.assert_allclose(eager, fallback, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_sweep_matches_the_eager_one():
    model = wrap(ConvNet(), 12, classes=5)
    x = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(1))
    params = ExplainParams(sampler="marginal", window=4, stride=2, samples=2, target="top2")
    eager = explain(model, x, params, random_stats(),
                    runtime=Runtime(batch_size=8, backend="torch")).relevance
    expl = explain(model, x, params, random_stats(),
                   runtime=Runtime(batch_size=8, backend="compile"))
    assert expl.runtime["backend"] == "compile"  # it really compiled (no eager fallback)
    fast = expl.relevance
    np.testing.assert_allclose(fast, eager, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_a_subset_of_windows_gets_exactly_the_full_sweeps_values(sampler_name):
    # chunks and drill-downs sweep some windows only; each must see the same samples
    size, k, stride = 20, 4, 1  # 289 windows: five blocks of 64, the last one partial
    model = wrap(ConvNet(), size, classes=5)
    x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(3))
    pos = window_positions(size, size, k, stride)
    sampler = make_sampler(sampler_name, x, k, pos, random_stats(), fill=(0.1, 0.2, 0.3))

    def readout(b):
        return torch.softmax(model(b).float(), 1)

    kw = dict(window=k, stride=stride, samples=3, seed=11)
    full = run_sweep(Forward(readout, batch_size=64), x, sampler, **kw)
    ids = torch.tensor([288, 5, 64, 63, 200, 130, 7])
    part = run_sweep(Forward(readout, batch_size=4), x, sampler, window_ids=ids, **kw)
    order = torch.sort(ids).values
    assert part.window_ids.tolist() == order.tolist()
    assert torch.equal(part.positions, pos[order])
    torch.testing.assert_close(part.window_means, full.window_means[order], rtol=0, atol=1e-7)
    assert part.forward_passes == len(ids) * (1 if sampler_name == "constant" else 3)


def test_a_window_readout_gives_the_same_sweep_as_full_images():
    size, k = 12, 3
    model = wrap(ConvNet(), size, classes=5)
    x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(4))
    pos = window_positions(size, size, k, 2)
    sampler = make_sampler("conditional", x, k, pos, random_stats())
    seen = []

    def readout(b):
        return model(b).float()

    def window_readout(p, patches):  # what an incremental evaluator receives
        seen.append(len(p))
        b = x.expand(len(p), *x.shape).clone()
        for i, (r, c) in enumerate(p.tolist()):
            b[i, :, r : r + k, c : c + k] = patches[i]
        return readout(b)

    kw = dict(window=k, stride=2, samples=2, seed=1)
    plain = run_sweep(Forward(readout, batch_size=7), x, sampler, **kw)
    windowed = run_sweep(Forward(readout, batch_size=7, window_readout=window_readout), x,
                         sampler, **kw)
    torch.testing.assert_close(windowed.window_means, plain.window_means, rtol=0, atol=1e-5)
    assert sum(seen) == plain.forward_passes and max(seen) == 7


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("batch_size,fixed,layout", [
    (1, False, torch.contiguous_format), (3, True, torch.channels_last),
    (8, False, torch.channels_last), (10, True, torch.contiguous_format)])
def test_the_reused_batch_buffer_gives_the_plain_sweeps_batches_bit_for_bit(
        monkeypatch, sampler, batch_size, fixed, layout):
    # the sweep writes each batch's windows into the last batch's buffer after putting the
    # previous windows back; the plain path copies the whole image into every row: every
    # batch the readout sees, padding rows included, and the sums must be identical
    import pda.engine.sweep as sweep_mod

    size, k, stride = 20, 5, 3  # 36 windows: 108 or 36 passes, so the last batch is short
    x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(6))
    w = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    smp = make_sampler(sampler, x, k, window_positions(size, size, k, stride), random_stats())

    def run() -> tuple[list[torch.Tensor], torch.Tensor]:
        seen: list[torch.Tensor] = []

        def readout(b):  # every pixel counts
            seen.append(b.clone())
            return torch.sigmoid(torch.einsum("bchw,tchw->bt", b, w))

        sw = run_sweep(Forward(readout, batch_size=batch_size, fixed_batch=fixed,
                               channels_last=layout == torch.channels_last), x, smp,
                       window=k, stride=stride, samples=3, seed=2)
        return seen, sw.window_means

    reused, reused_means = run()
    plain_batch = sweep_mod._perturbed_batch
    monkeypatch.setattr(sweep_mod, "_perturbed_batch",
                        lambda *a, reuse=None, **kw: plain_batch(*a, **kw))
    plain, plain_means = run()
    assert len(reused) == len(plain) > 2
    for got, ref in zip(reused, plain, strict=True):
        assert torch.equal(got, ref)
        assert got.is_contiguous(memory_format=layout)
    assert torch.equal(reused_means, plain_means)
    if fixed:  # the last batch's padding rows are the unmodified image
        n_last = (36 * smp_passes(sampler)) % batch_size or batch_size
        for row in reused[-1][n_last:]:
            assert torch.equal(row, x)


def smp_passes(sampler: str) -> int:
    return 1 if sampler == "constant" else 3
