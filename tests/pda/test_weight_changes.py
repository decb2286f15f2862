"""A model whose weights change gets a graph of its new weights, on every backend (issue 19).

Converted graphs (OpenVINO IR, ONNX, compiled) hold a copy of the weights. They are keyed
on the weights as they are at the call, so neither the per-model memo nor the disk cache
hands back the graph of the weights before an in-place change (fine-tuning, a
model-randomisation check) or of the original a changed deep copy came from.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import pda
from pda.engine.backends import build_net, onnx_backend, openvino_backend
from pda.settings import Settings
from tests.support.toys import ConvNet, wrap

BACKENDS = ["torch", "compile",
            *(["openvino"] if openvino_backend.available() else []),
            *(["onnxruntime"] if onnx_backend.available() else [])]
SIZE = 16
QUICK = dict(window=4, stride=4, samples=2, target="0,1", faithfulness=False, batch_size=8,
             input_size=(SIZE, SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def photo() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8))


def perturb(module: torch.nn.Module) -> None:
    """An in-place change, as a training step or a randomisation check makes one."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.25 * torch.randn(p.shape, generator=g))


def maps(module: torch.nn.Module, backend: str, settings: Settings) -> np.ndarray:
    result = pda.explain(photo(), module, backend=backend, settings=settings, **QUICK)
    ran = result.explanation.runtime["backend"]
    if backend == "compile" and ran != "compile":
        pytest.skip("torch.compile does not run here (no C++ compiler)")
    assert ran == backend
    return result.relevance


def assert_same(got: np.ndarray, ref: np.ndarray) -> None:
    """Equal to float rounding (compiled kernels sum in another order): 1e-3 of the map's
    scale, ten times below what :func:`assert_differs` asks of another model's map."""
    scale = float(np.abs(ref).max())
    assert scale > 0
    assert float(np.abs(got - ref).max()) <= 1e-3 * scale


def assert_differs(a: np.ndarray, b: np.ndarray) -> None:
    assert float(np.abs(a - b).max()) > 1e-2 * float(np.abs(a).max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", ["in place", "deep copy"])
def test_a_changed_model_is_explained_with_its_new_weights(backend, change, tmp_path):
    settings = Settings(backend_cache_dir=tmp_path)  # the disk cache on, as by default
    module = ConvNet(classes=5)
    first = maps(module, backend, settings)
    if change == "in place":
        changed = module
    else:  # copies whatever the first call left on the module
        changed = copy.deepcopy(module)
    perturb(changed)
    second = maps(changed, backend, settings)
    assert_differs(second, first)
    assert_same(second, maps(changed, "torch", settings))
    if change == "deep copy":  # and the original still gets its own graph
        assert_same(maps(module, backend, settings), first)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("openvino", "onnxruntime")])
def test_a_worker_held_model_changed_in_place_is_converted_again(backend, tmp_path):
    """The same model object (a worker's, memoised nets and all) after an in-place change."""
    model = wrap(ConvNet(classes=5), SIZE, classes=5)
    x = torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    conversions = (openvino_backend if backend == "openvino" else onnx_backend).CONVERSIONS
    before = conversions["count"]
    a = build_net(model, "output", backend=backend, batch_size=8, cache_dir=tmp_path)(x)
    assert build_net(model, "output", backend=backend, batch_size=8,
                     cache_dir=tmp_path)(x).equal(a)  # unchanged: memoised, not converted
    assert conversions["count"] == before + 1
    perturb(model.module)
    b = build_net(model, "output", backend=backend, batch_size=8, cache_dir=tmp_path)(x)
    assert conversions["count"] == before + 2
    ref = build_net(model, "output", backend="torch")(x)
    torch.testing.assert_close(b, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, b, atol=1e-3)
