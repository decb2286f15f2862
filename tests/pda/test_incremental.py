"""Exact incremental inference: every layer's patch, and every map, equal full recompute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pda.engine.geometry import window_positions
from pda.engine.incremental import (
    IncrementalGraph,
    IncrementalUnsupportedError,
    graph_for,
    window_readout,
)
from pda.engine.incremental.patch import Patch, affected, materialise
from pda.engine.samplers import make_sampler
from pda.engine.sweep import Forward, _perturbed_batch, relevance_maps, run_sweep
from pda.runtime import Runtime
from tests.support.toys import random_stats, wrap

ROOT = Path(__file__).resolve().parents[2]
SAMPLERS = ["constant", "marginal", "conditional"]


class Block(nn.Module):
    """Residual add and a channel concat of two branches (Inception-like)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(c, c, 3, padding=1, groups=c)  # depthwise
        self.bn = nn.BatchNorm2d(2 * c)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.squeeze = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        y = self.squeeze(self.pool(F.hardswish(self.bn(y))))
        return x + y * 0.5


class PatchNet(nn.Module):
    """Stride, padding, dilation, depthwise groups, max/avg pooling, add, concat; then a
    global mean and a linear head. Weights random but fixed, batch-norm in eval mode."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 5, stride=2, padding=2)
        self.act = nn.ReLU6()
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.block = Block(6)
        self.down = nn.Conv2d(6, 8, (3, 2), stride=(2, 1), padding=(1, 0))
        self.head = nn.Linear(8, classes)
        g = torch.Generator().manual_seed(0)
        for name, p in self.named_parameters():
            p.data = torch.randn(p.shape, generator=g) * (0.3 if "weight" in name else 0.1)
        self.block.bn.running_mean.uniform_(-0.2, 0.2, generator=g)
        self.block.bn.running_var.uniform_(0.5, 2.0, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(self.pool(self.act(self.stem(x))))
        return self.head(torch.sigmoid(self.down(h)).mean(dim=(2, 3)))


class Unknown(nn.Module):
    """A local op the engine does not know (a shift): it must fall back, still exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, dims=3)


class FallbackNet(PatchNet):
    def __init__(self) -> None:
        super().__init__()
        self.odd = Unknown()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(self.odd(self.pool(self.act(self.stem(x)))))
        return self.head(self.down(h).mean(dim=(2, 3)))


def _image(size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def _corners(size: int, k: int) -> torch.Tensor:
    e = size - k
    return torch.tensor([[0, 0], [0, e], [e, 0], [e, e], [e // 2, 1], [1, e // 2], [3, 5]])


@pytest.mark.parametrize("n,k,s,p", [(10, 3, 1, 1), (10, 5, 2, 2), (4, 3, 2, 0),
                                     (1, 1, 2, 0), (7, 5, 3, 1), (3, 7, 1, 6)])
def test_affected_rows_hold_every_touched_output(n, k, s, p):
    L = 40
    out_len = (L + 2 * p - k) // s + 1
    a = torch.arange(L - n + 1)
    lo, m = affected(a, n, k, s, p, out_len)
    for ai, oi in zip(a.tolist(), lo.tolist(), strict=True):
        touched = [o for o in range(out_len) if o * s - p < ai + n and o * s - p + k > ai]
        assert 0 <= oi and oi + m <= out_len
        assert all(oi <= o < oi + m for o in touched)
    assert m <= max(len(range(0, k + n)), 1)


@pytest.mark.parametrize("B", [1, 7, 64])
def test_every_layer_equals_the_full_recompute_at_every_node(B):
    size, k = 64, 5
    model = wrap(PatchNet(), size, classes=4)
    x = _image(size)
    graph = graph_for(model, x)
    pos = torch.cat([_corners(size, k), torch.randint(0, size - k + 1, (64, 2))])[:B]
    patches = torch.rand(B, 3, k, k, generator=torch.Generator().manual_seed(B))
    graph.keep_values = True
    graph(pos, patches)
    values = {n: materialise(v) if isinstance(v, Patch) else v for n, v in graph.values.items()}
    n_patch = sum(isinstance(v, Patch) for v in graph.values.values())
    batch = _perturbed_batch(x, pos, patches, B, torch.contiguous_format)
    for b in range(B):
        full = IncrementalGraph(graph.gm, batch[b]).base  # every node, b-th perturbed image
        for node, v in values.items():
            if isinstance(v, torch.Tensor) and v.shape[0] == B:
                got = v[b]
            else:
                continue
            assert torch.allclose(got, full[node][0], atol=1e-5, rtol=1e-5), node.name
    assert n_patch == 18  # every node up to the global mean carries a patch


def test_incremental_work_is_smaller_than_the_full_pass():
    size, k = 64, 5
    graph = graph_for(wrap(PatchNet(), size, classes=4), _image(size))
    pos, patch = torch.tensor([[30, 30]]), torch.rand(1, 3, k, k)
    graph(pos, patch)
    incremental = graph.macs
    graph.dense_above = -1.0  # every patch straight to full maps: the naive pass
    graph(pos, patch)
    assert graph.macs > 3 * incremental


def _maps(model, x, sampler_name, k, stride, B, layer="output"):
    positions = window_positions(x.shape[1], x.shape[2], k, stride)
    sampler = make_sampler(sampler_name, x, k, positions, random_stats(), fill=(0.1, 0.5, 0.9))
    idx = torch.tensor([0, 2])
    if layer == "output":
        def readout(b):
            return torch.softmax(model(b).float(), 1)[:, idx]
    else:
        def readout(b):
            net = model.module
            h = net.block(net.pool(net.act(net.stem(model.normalise(b)))))
            return net.down(h).mean((2, 3))[:, idx]  # (B, T) layer "down", spatial mean
    maps = []
    for wr in (None, window_readout(model, x, layer, idx)):
        sweep = run_sweep(Forward(readout, batch_size=B, window_readout=wr), x, sampler,
                          window=k, stride=stride, samples=2, seed=7)
        maps.append(relevance_maps(sweep, x.shape[1], x.shape[2], k, stride,
                                   log_odds=layer == "output", num_classes=4)[0])
    return maps


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("B", [1, 7, 64])
def test_maps_equal_the_naive_sweep_for_every_sampler(sampler, B):
    size = 20
    model = wrap(PatchNet(), size, classes=4)
    naive, fast = _maps(model, _image(size), sampler, 4, 4 if B == 1 else 2, B)
    assert naive.abs().max() > 1e-3
    assert (naive - fast).abs().max() <= 1e-4 * naive.abs().max()


def test_hidden_layer_mean_is_updated_from_the_patch():
    size = 24
    model = wrap(PatchNet(), size, classes=4)
    x = _image(size)
    graph = graph_for(model, x, layer="down")
    assert graph.stop.target == "net.down"
    naive, fast = _maps(model, x, "conditional", 5, 2, 16, layer="down")
    assert naive.abs().max() > 1e-3
    assert (naive - fast).abs().max() <= 1e-4 * naive.abs().max()


def test_an_unknown_layer_falls_back_to_full_maps_and_stays_exact():
    size = 24
    model = wrap(FallbackNet(), size, classes=4)
    naive, fast = _maps(model, _image(size), "marginal", 4, 2, 8)
    assert (naive - fast).abs().max() <= 1e-4 * naive.abs().max()
    graph = graph_for(model, _image(size))
    graph.keep_values = True
    graph(torch.tensor([[3, 3]]), torch.rand(1, 3, 4, 4))
    odd = next(n for n in graph.nodes if n.target is torch.roll)
    assert isinstance(graph.values[odd], torch.Tensor)  # full maps from the unknown op on


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return x.mean((2, 3))
        return -x.mean((2, 3))


def test_an_untraceable_model_is_refused_with_a_reason():
    with pytest.raises(IncrementalUnsupportedError, match="cannot trace"):
        graph_for(wrap(Branchy(), 8), _image(8))


def test_efficientnet_lite0_on_a_real_photo_gives_the_naive_map():
    from pda.engine.inputs import preprocess
    from pda.engine.stats import get_stats
    from pda.images import open_image
    from pda.models.registry import get_model

    model = get_model("efficientnet_lite0")
    x, _ = preprocess(open_image(ROOT / "examples/chelsea.png"), model.input_size, fit="crop")
    k, stride = 10, 53  # windows on every border and in the middle, 25 of them
    positions = window_positions(224, 224, k, stride)
    sampler = make_sampler("conditional", x, k, positions, get_stats())
    idx = torch.tensor([281, 285])
    maps = []
    for wr in (None, window_readout(model, x, "output", idx)):
        forward = Forward(lambda b: torch.softmax(model(b).float(), 1)[:, idx], batch_size=25,
                          window_readout=wr)
        sweep = run_sweep(forward, x, sampler, window=k, stride=stride, samples=2)
        maps.append(relevance_maps(sweep, 224, 224, k, stride, log_odds=True,
                                   num_classes=1000)[0])
    naive, fast = maps
    assert naive.abs().max() > 1e-3
    assert (naive - fast).abs().max() <= 1e-4 * naive.abs().max()


@pytest.mark.parametrize("layer", ["output", "block.squeeze", "block"])
def test_explain_with_incremental_on_gives_the_off_map_and_says_so(layer):
    from pda.document import result_document
    from pda.engine.explain import explain
    from pda.params import ExplainParams

    size = 24
    model = wrap(PatchNet(), size, classes=4)
    x = _image(size)
    docs = {}
    for mode in ("off", "on"):
        params = ExplainParams(window=4, stride=3, samples=2, target="top2", layer=layer,
                               incremental=mode)
        expl = explain(model, x, params, random_stats(),
                       runtime=Runtime(batch_size=8, backend="torch"))
        docs[mode] = (expl, result_document(expl, model_name="toy", input_size=(size, size),
                                            image_size=(size, size), crop_box=(0, 0, size, size),
                                            params=params))
    off, on = docs["off"][0].relevance, docs["on"][0].relevance
    assert abs(off).max() > 1e-3
    assert abs(off - on).max() <= 1e-4 * abs(off).max()
    assert docs["on"][1]["runtime"]["incremental"] is True
    assert docs["off"][1]["runtime"]["incremental"] is False


def test_auto_follows_the_measured_decisions_and_the_setting_default():
    from pda.engine.incremental.decisions import _table, use_incremental

    table = _table()
    for device, backends in table.items():
        for backend, models in backends.items():
            for name, entry in models.items():
                assert use_incremental("auto", name, device, backend) is entry["faster"]
    assert use_incremental("auto", "a-model-nobody-measured", "cpu") is False
    assert use_incremental("on", "a-model-nobody-measured", "cpu") is True
    with pytest.raises(ValueError, match="auto, on, off"):
        use_incremental("sometimes", "toy", "cpu")
