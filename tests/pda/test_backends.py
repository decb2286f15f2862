"""Execution backends: every backend's maps equal torch eager's, conversions are cached on
disk, and bad choices fail clearly.

The equality bound is the issue's: 1e-4 of the map's max |relevance|.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pda.engine.backends import (
    BackendNet,
    Ran,
    build_net,
    build_readout,
    onnx_backend,
    openvino_backend,
    resolve_backend,
)
from pda.engine.geometry import window_positions
from pda.engine.samplers import make_sampler
from pda.engine.sweep import Forward, relevance_maps, run_sweep
from pda.errors import InvalidParameterError
from pda.runtime import Runtime
from tests.support.toys import ConvNet, LinearModel, RegionModel, random_stats, wrap

ROOT = Path(__file__).resolve().parents[2]
FAST = [b for b, ok in (("openvino", openvino_backend.available()),
                        ("onnxruntime", onnx_backend.available()), ("compile", True)) if ok]
SIZE = 16


def sweep_map(model, layer: str, targets: list[int], backend: str, *, sampler: str = "conditional",
              k: int = 4, stride: int = 2, samples: int = 3, batch_size: int = 8,
              cache_dir: Path | None = None, precision: str = "fp32",
              x: torch.Tensor | None = None, stats=None) -> tuple[torch.Tensor, Ran]:
    """Relevance maps (T, H, W) of ``layer`` through ``backend``, and what ran them."""
    H, W = model.input_size
    if x is None:
        x = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1))
    readout = build_readout(model, layer, targets, backend=backend, precision=precision,
                            batch_size=batch_size, cache_dir=cache_dir)
    smp = make_sampler(sampler, x, k, window_positions(H, W, k, stride, device=x.device),
                       stats or random_stats(), padding=2)
    forward = Forward(readout, batch_size=batch_size, channels_last=readout.channels_last,
                      fixed_batch=readout.fixed_batch)
    sw = run_sweep(forward, x, smp, window=k, stride=stride, samples=samples)
    rel, _ = relevance_maps(sw, H, W, k, stride, log_odds=layer == "output",
                            num_classes=model.num_classes)
    return rel, readout.runtime


def assert_same_map(got: torch.Tensor, ref: torch.Tensor) -> None:
    scale = float(ref.abs().max())
    assert scale > 0, "a map of zeros proves nothing"
    assert float((got - ref).abs().max()) <= 1e-4 * scale


def region_model():
    m = wrap(RegionModel((slice(4, 10), slice(6, 12)), gain=8.0), SIZE)
    return m, "output", [0, 1]


def linear_model():
    w = torch.linspace(-1, 1, SIZE * SIZE).reshape(SIZE, SIZE)
    return wrap(LinearModel(w, bias=0.5), SIZE), "logits", [0]


def conv_hidden():
    return wrap(ConvNet(classes=5), SIZE, classes=5), "features.2", [0, 3, 5]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", [region_model, linear_model, conv_hidden])
def test_every_backend_gives_torch_eagers_map_on_hand_set_models(backend, case, tmp_path):
    model, layer, targets = case()
    ref, ref_rt = sweep_map(model, layer, targets, "torch")
    got, rt = sweep_map(model, layer, targets, backend, cache_dir=tmp_path)
    assert ref_rt.backend == "torch" and rt == Ran(backend, "fp32", "cpu")
    assert got.shape == (len(targets), SIZE, SIZE)
    assert_same_map(got, ref)


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_linear_logits_map_is_the_hand_computed_activation_difference(backend, tmp_path):
    """Constant fill f, window w: AD = sum_w weight * (x_red - f_red); with stride = k each
    pixel has one window, so its relevance is that window's sum."""
    model, layer, targets = linear_model()
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    rel, _ = sweep_map(model, layer, targets, backend, sampler="constant", k=4, stride=4,
                       samples=1, cache_dir=tmp_path, x=x)
    fill = float(random_stats().mean[0])
    contrib = model.module.weight * (x[0] - fill)  # (H, W)
    per_window = contrib.reshape(4, 4, 4, 4).sum(dim=(1, 3))  # (4, 4) windows
    expected = per_window.repeat_interleave(4, 0).repeat_interleave(4, 1)  # (H, W)
    torch.testing.assert_close(rel[0].float(), expected.float(), atol=1e-4, rtol=0)


def test_fixed_batch_pads_and_splits_without_changing_rows():
    seen: list[int] = []

    def net(b: torch.Tensor) -> torch.Tensor:
        seen.append(len(b))
        return b.flatten(1).sum(1, keepdim=True)  # (B, 1)

    fixed = BackendNet(net, Ran("openvino", "fp32", "cpu"), 4, False)
    b = torch.rand(10, 3, 2, 2)
    torch.testing.assert_close(fixed(b), b.flatten(1).sum(1, keepdim=True))
    assert seen == [4, 4, 4]


@pytest.mark.skipif(not openvino_backend.available(), reason="openvino is not installed")
def test_a_fresh_process_state_reads_the_converted_graph_from_disk(tmp_path):
    model, layer, targets = conv_hidden()
    before = openvino_backend.CONVERSIONS["count"]
    build_net(model, layer, backend="openvino", batch_size=8, cache_dir=tmp_path)
    assert openvino_backend.CONVERSIONS["count"] == before + 1
    (ir,) = (tmp_path / "openvino").glob("*.xml")
    mtime = ir.stat().st_mtime_ns
    assert ir.with_suffix(".bin").exists()
    # a new model object has no memo: as a restarted worker would, it goes to the disk
    again = wrap(model.module, SIZE, classes=5)
    net = build_net(again, layer, backend="openvino", batch_size=8, cache_dir=tmp_path)
    assert openvino_backend.CONVERSIONS["count"] == before + 1
    assert ir.stat().st_mtime_ns == mtime and len(list((tmp_path / "openvino").glob("*.xml"))) == 1
    x = torch.rand(8, 3, SIZE, SIZE)
    ref = build_net(model, layer, backend="torch")(x)
    torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)
    # another batch shape is another graph
    build_net(again, layer, backend="openvino", batch_size=4, cache_dir=tmp_path)
    assert openvino_backend.CONVERSIONS["count"] == before + 2


def test_a_process_converts_once_per_model_and_readout(tmp_path):
    model, layer, _ = region_model()
    a = build_net(model, "output", backend=FAST[0], batch_size=8, cache_dir=tmp_path)
    b = build_net(model, "logits", backend=FAST[0], batch_size=8, cache_dir=tmp_path)
    assert a is b  # output and logits share the logits graph


def test_unknown_backend_is_a_clear_error():
    model, _, _ = region_model()
    with pytest.raises(InvalidParameterError, match="unknown backend 'tensorrt'; use auto"):
        build_net(model, "output", backend="tensorrt")


def test_onnxruntime_refuses_reduced_precision():
    if not onnx_backend.available():
        pytest.skip("onnxruntime is not installed")
    with pytest.raises(InvalidParameterError, match="fp32 only"):
        resolve_backend("onnxruntime", torch.device("cpu"), "bf16")


def test_auto_takes_openvino_on_the_cpu_and_torch_without_it(monkeypatch):
    cpu = torch.device("cpu")
    expected = "openvino" if openvino_backend.available() else "torch"
    assert resolve_backend("auto", cpu) == expected
    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(InvalidParameterError, match="openvino is not installed"):
        resolve_backend("openvino", cpu)


@pytest.mark.skipif(not openvino_backend.available(), reason="openvino is not installed")
def test_openvino_bf16_is_opt_in_recorded_and_close(tmp_path):
    model, layer, targets = region_model()
    ref, _ = sweep_map(model, layer, targets, "torch")
    try:
        got, rt = sweep_map(model, layer, targets, "openvino", precision="bf16",
                            cache_dir=tmp_path)
    except InvalidParameterError as e:  # a CPU without bf16 says so
        assert "not available with openvino" in str(e)
        return
    assert rt == Ran("openvino", "bf16", "cpu")
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max())


@pytest.fixture(scope="module")
def real_case():
    """EfficientNet-Lite0 (real weights) on chelsea.png with the shipped statistics: the
    paper's window (k = 10, padding 2) at stride 71, 16 windows x 2 samples, and torch
    eager's map of the two cat classes, computed once."""
    from pda.engine.inputs import preprocess
    from pda.engine.stats import get_stats
    from pda.images import open_image
    from pda.models.registry import get_model

    model = get_model("efficientnet_lite0")
    x = preprocess(open_image(ROOT / "examples/chelsea.png"), model.input_size,
                   fit="crop")[0]  # (C, H, W)
    kw = dict(k=10, stride=71, samples=2, batch_size=8, x=x, stats=get_stats())
    ref, _ = sweep_map(model, "output", [281, 285], "torch", **kw)
    return model, kw, ref


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in FAST if b != "compile"])
def test_real_model_on_a_real_photo_matches_torch(backend, real_case, tmp_path):
    model, kw, ref = real_case
    got, rt = sweep_map(model, "output", [281, 285], backend, cache_dir=tmp_path, **kw)
    assert rt.backend == backend
    assert_same_map(got, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", [region_model, conv_hidden])
def test_cuda_compiled_path_gives_the_eager_map(case):
    model, layer, targets = case()
    model = wrap(model.module.to("cuda"), SIZE, classes=model.num_classes)
    model.device = torch.device("cuda")
    model.__post_init__()
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).cuda()
    ref, _ = sweep_map(model, layer, targets, "torch", x=x)
    got, rt = sweep_map(model, layer, targets, "auto", x=x, batch_size=32)
    assert rt.backend == "compile" and rt.device.startswith("cuda")
    assert_same_map(got, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_reduced_precision_is_recorded_and_close(precision):
    model, layer, targets = region_model()
    model = wrap(model.module.to("cuda"), SIZE)
    model.device = torch.device("cuda")
    model.__post_init__()
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).cuda()
    ref, _ = sweep_map(model, layer, targets, "torch", x=x)
    got, rt = sweep_map(model, layer, targets, "compile", x=x, precision=precision)
    assert rt.precision == precision
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_gpu_marker_is_registered():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"gpu: ' in text and os.path.exists(ROOT / "scripts/ops/gpu-check.sh")


@pytest.mark.parametrize("layer", ["output", "features.2"])
def test_explain_runs_on_the_chosen_backend_and_records_it(layer, tmp_path):
    from pda.document import result_document
    from pda.engine.explain import explain
    from pda.params import ExplainParams

    model = wrap(ConvNet(classes=5), SIZE, classes=5)
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    params = ExplainParams(window=4, stride=2, samples=2, target="top2", layer=layer)
    ref = explain(model, x, params, random_stats(), runtime=Runtime(batch_size=8, backend="torch"))
    got = explain(model, x, params, random_stats(),
                  runtime=Runtime(batch_size=8, backend="auto", cache_dir=tmp_path))
    auto = resolve_backend("auto", torch.device("cpu"))
    # a toy model has no measured incremental decision: auto leaves it off
    plain = {"incremental": False, "incremental_mode": "auto"}
    assert _sweep_runtime(ref.runtime, "torch") == {
        "backend": "torch", "precision": "fp32", "device": "cpu", **plain}
    assert _sweep_runtime(got.runtime, auto) == {
        "backend": auto, "precision": "fp32", "device": "cpu", **plain}
    assert got.targets == ref.targets
    assert_same_map(torch.from_numpy(got.relevance), torch.from_numpy(ref.relevance))
    doc = result_document(got, model_name="toy", input_size=(SIZE, SIZE),
                          image_size=(SIZE, SIZE), crop_box=(0, 0, SIZE, SIZE), params=params)
    assert _sweep_runtime(doc["runtime"], auto) == {
        "backend": auto, "precision": "fp32", "device": "cpu", **plain}


def _sweep_runtime(runtime: dict, backend: str) -> dict:
    """The sweep's part of ``runtime``; the faithfulness scores, where the layer has them,
    ran on the same backend at fp32 (a rate beside it is measured, so not compared)."""
    runtime = dict(runtime)
    scores = runtime.pop("faithfulness", None)
    if scores is not None:
        assert (scores["backend"], scores["precision"]) == (backend, "fp32")
    return runtime


def test_explain_rejects_an_unknown_backend_before_any_work():
    from pda.engine.explain import explain
    from pda.params import ExplainParams

    model = wrap(ConvNet(classes=5), SIZE, classes=5)
    with pytest.raises(InvalidParameterError, match="unknown backend 'fast'"):
        explain(model, torch.rand(3, SIZE, SIZE), ExplainParams(window=4, stride=4),
                random_stats(), runtime=Runtime(backend="fast"))


def test_torch_threads_are_lowered_around_a_backend_with_its_own_pool_and_restored():
    from pda.engine.backends import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    model, layer, _ = region_model()
    assert build_net(model, layer, backend="torch").torch_threads is None
    if FAST[0] != "compile":
        assert build_net(model, layer, backend=FAST[0], batch_size=8).torch_threads == 1


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_user_model_files_run_on_every_backend(backend, suffix, tmp_path):
    """A torch.export archive and a TorchScript file, each with its sidecar, give torch
    eager's maps (output layer) on every backend."""
    import json
    import warnings

    from pda.models.registry import load_model

    net = ConvNet(classes=5).eval()
    path = tmp_path / f"user{suffix}"
    if suffix == ".pt2":
        batch = torch.export.Dim("batch", min=1, max=4096)
        ep = torch.export.export(net, (torch.rand(2, 3, SIZE, SIZE),),
                                 dynamic_shapes=({0: batch},))
        torch.export.save(ep, str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(net).save(str(path))
    path.with_suffix(".json").write_text(json.dumps(
        {"input_size": [SIZE, SIZE], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}))
    model = load_model(str(path))
    ref, _ = sweep_map(model, "output", [1, 4], "torch")
    got, rt = sweep_map(model, "output", [1, 4], backend, cache_dir=tmp_path / "cache")
    assert rt.backend == backend
    assert_same_map(got, ref)


@pytest.mark.skipif(not openvino_backend.available(), reason="openvino is not installed")
def test_an_unwritable_cache_directory_converts_without_it(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model, layer, targets = region_model()
    rel, rt = sweep_map(model, layer, targets, "openvino", cache_dir=blocker / "cache")
    assert rt.backend == "openvino" and "not writable" in caplog.text
    assert_same_map(rel, sweep_map(model, layer, targets, "torch")[0])
