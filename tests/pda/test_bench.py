"""``pda bench`` end to end on a tiny model, and the speed switches of the sweep.

No timing assertions: the machine running the tests is shared. What is checked is the
report's structure, its arithmetic, and that the fast paths compute the same numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pda.cli import main as cli_main
from pda.defaults import DEFAULT_SAMPLES, DEFAULT_STRIDE, DEFAULT_WINDOW
from pda.engine.device import auto_batch_size
from pda.engine.explain import explain
from pda.engine.geometry import window_positions
from pda.engine.samplers import make_sampler
from pda.engine.sweep import Forward, run_sweep
from pda.errors import InvalidParameterError
from pda.grid import count_windows
from pda.params import ExplainParams
from pda.runtime import Runtime
from pda.tools.bench import format_table, run_bench
from tests.support.toys import ConvNet, random_stats, wrap

SIZE = 32  # the tiny model's input: chelsea.png is resized to 32 x 32


@pytest.fixture(scope="module")
def doc() -> dict:
    model = wrap(ConvNet(classes=5), SIZE, classes=5)
    return run_bench(model, seconds=0.02, rounds=2, batch_sizes=(1, 4), stats=random_stats(),
                     precisions=("bf16",))


def test_bench_measures_raw_throughput_per_batch_size_and_layout(doc):
    tried = {(r["layout"], r["batch_size"]) for r in doc["raw"]["tried"]}
    assert tried == {(lay, b) for lay in ("contiguous", "channels_last") for b in (1, 4)}
    best = doc["raw"]["best"]
    assert best["images_per_s"] == max(r["images_per_s"] for r in doc["raw"]["tried"])
    assert doc["input_size"] == [SIZE, SIZE] and doc["model"] == "toy"


def test_bench_sweeps_every_sampler_at_the_best_batch_with_a_ratio_to_raw(doc):
    rows = {s["sampler"]: s for s in doc["sweep"]}
    assert set(rows) == {"conditional", "marginal", "constant"}
    for s in rows.values():
        assert s["batch_size"] == doc["raw"]["best"]["batch_size"]
        assert s["passes_per_s"] > 0 and len(s["rounds"]) == 2
        assert s["ratio"] == pytest.approx(s["passes_per_s"] / s["raw_images_per_s"])
        assert s["ratio_median"] > 0
        per = 1 if s["sampler"] == "constant" else 10
        assert s["passes"] == count_windows(SIZE, SIZE, 10, s["stride"]) * per + 1


def test_occlusion_matches_captum_on_the_same_windows(doc):
    pytest.importorskip("captum")
    occ = doc["occlusion"]
    assert occ["stride"] <= occ["window"]
    assert (SIZE - occ["window"]) % occ["stride"] == 0  # Captum's windows are ours
    assert occ["ratio"] == pytest.approx(occ["captum_seconds"] / occ["pda_seconds"])
    assert occ["max_abs"] > 0
    assert occ["max_abs_diff"] < 1e-5  # the same map, not just the same speed


def test_job_estimates_are_passes_over_the_measured_conditional_rate(doc):
    est = doc["estimates"]
    rate = next(s["passes_per_s"] for s in doc["sweep"] if s["sampler"] == "conditional")
    assert est["passes_per_s"] == rate
    paper = est["paper"]
    assert (paper["window"], paper["stride"], paper["samples"]) == (10, 1, 10)
    assert paper["windows"] == (SIZE - 10 + 1) ** 2
    assert paper["passes"] == paper["windows"] * 10 + 1
    assert paper["seconds"] == pytest.approx(paper["passes"] / rate)
    default = est["default"]
    n_w = count_windows(SIZE, SIZE, DEFAULT_WINDOW, DEFAULT_STRIDE)
    assert default["passes"] == n_w * DEFAULT_SAMPLES + 1
    assert default["seconds"] == pytest.approx(default["passes"] / rate)


def test_precision_section_compares_relevance_with_fp32(doc):
    (p,) = doc["precision"]
    assert p["precision"] == "bf16" and p["passes_per_s"] > 0
    assert p["ratio"] == pytest.approx(p["passes_per_s"] / p["fp32_passes_per_s"])
    assert math.isfinite(p["max_abs_diff_bits"])
    assert p["mean_abs_diff_bits"] <= p["max_abs_diff_bits"]


def test_table_names_every_section(doc):
    text = format_table(doc)
    for word in ("raw model", "conditional", "marginal", "constant", "captum",
                 "paper job", "service default", "bf16"):
        assert word in text


def test_profile_splits_a_sweep_into_the_engine_scopes():
    model = wrap(ConvNet(classes=5), SIZE, classes=5)
    doc = run_bench(model, seconds=0.01, rounds=1, batch_sizes=(4,), stats=random_stats(),
                    samplers=("constant",), captum=False, profile=True)
    (prof,) = doc["profile"]
    assert set(prof["share"]) == {"sample", "batch", "forward", "accumulate", "other"}
    assert sum(prof["share"].values()) == pytest.approx(1.0)
    assert prof["share"]["forward"] > 0
    assert "where a sweep's time goes" in format_table(doc)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace: a quick model file
def test_cli_bench_json_parses(tmp_path, capsys):
    net = ConvNet(classes=5).eval()
    path = tmp_path / "tiny.pt"
    torch.jit.trace(net, torch.rand(1, 3, SIZE, SIZE)).save(str(path))
    path.with_suffix(".json").write_text(json.dumps(
        {"input_size": [SIZE, SIZE], "mean": [0, 0, 0], "std": [1, 1, 1]}))
    code = cli_main(["bench", "--model", str(path), "--device", "cpu", "--seconds", "0.02",
                     "--rounds", "1", "--batch-sizes", "2", "--samplers", "constant",
                     "--no-captum", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["sampler"] for s in out["sweep"]] == ["constant"]
    assert out["occlusion"] is None and out["raw"]["best"]["batch_size"] == 2
    assert out["estimates"]["paper"]["passes"] == (SIZE - 9) ** 2 * 10 + 1


def test_cli_bench_refuses_an_unknown_sampler(capsys):
    assert cli_main(["bench", "--samplers", "gibbs", "--seconds", "1"]) == 2
    assert "gibbs" in capsys.readouterr().err


# --- the sweep's speed switches -----------------------------------------------------------


def _sweep(precision: str | None = None, channels_last: bool | None = None,
           sampler: str = "conditional"):
    model = wrap(ConvNet(), 16, classes=5)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    pos = window_positions(16, 16, 4, 2)
    smp = make_sampler(sampler, x, 4, pos, random_stats(), padding=2)
    kw = {} if precision is None else {"precision": precision}
    forward = Forward(lambda b: torch.softmax(model(b).float(), 1), batch_size=5,
                      channels_last=channels_last, **kw)
    return run_sweep(forward, x, smp, window=4, stride=2, samples=3, seed=1)


def test_fp32_is_the_default_and_computes_the_same_numbers():
    plain = _sweep(channels_last=False)
    np.testing.assert_array_equal(_sweep("fp32", channels_last=False).window_means,
                                  plain.window_means)
    # NHWC batches change the convolution's summation order, not the result
    np.testing.assert_allclose(_sweep("fp32", channels_last=True).window_means,
                               plain.window_means, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_the_cpu_runs_and_stays_close(precision):
    fp32, low = _sweep("fp32"), _sweep(precision)
    assert low.window_means.dtype == torch.float64  # accumulation stays in float64
    np.testing.assert_allclose(low.window_means, fp32.window_means, atol=0.05)


def test_unknown_precision_is_a_parameter_error():
    with pytest.raises(InvalidParameterError, match="fp32, bf16, fp16"):
        _sweep("fp8")
    model = wrap(ConvNet(), 16, classes=5)
    with pytest.raises(InvalidParameterError):
        explain(model, torch.rand(3, 16, 16), ExplainParams(window=4, stride=4),
                random_stats(), runtime=Runtime(precision="int8", backend="torch"))


def test_explain_picks_a_batch_size_when_none_is_given():
    model = wrap(ConvNet(), 16, classes=5)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    params = ExplainParams(sampler="marginal", window=4, stride=2, samples=2, target="0")
    auto = explain(model, x, params, random_stats(), runtime=Runtime(backend="torch")).relevance
    three = explain(model, x, params, random_stats(),
                    runtime=Runtime(batch_size=3, backend="torch")).relevance
    np.testing.assert_allclose(auto, three, rtol=1e-4, atol=1e-5)
    assert auto_batch_size(torch.device("cpu"), (16, 16)) >= 1


def test_backend_bench_puts_every_backend_beside_torch_eager_with_error_and_estimates():
    from pda.engine.backends import openvino_backend
    from pda.tools.bench_backends import format_backends, run_backend_bench

    model = wrap(ConvNet(classes=5), SIZE, classes=5)
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    wanted = ("torch", "openvino") if openvino_backend.available() else ("torch",)
    doc = run_backend_bench(model, x, random_stats(), batch_size=4, backends=wanted,
                            precisions=("bf16",), seconds=0.2, rounds=2)
    rows = {(r["backend"], r["precision"]): r for r in doc["rows"]}
    assert set(rows) >= {("torch", "fp32"), ("torch", "bf16")}
    ref = rows["torch", "fp32"]
    assert ref["x_eager"] == 1.0 and ref["max_abs_diff_bits"] == 0.0
    for r in rows.values():
        assert len(r["rounds"]) == 2 and r["passes_per_s"] == max(r["rounds"])
        assert r["x_eager"] == pytest.approx(r["passes_per_s"] / ref["passes_per_s"])
        paper = count_windows(SIZE, SIZE, 10, 1) * 10 + 1
        assert r["estimates"]["paper"] == pytest.approx(paper / r["passes_per_s"])
        assert r["ran_as"]["backend"] == r["backend"]
    if ("openvino", "fp32") in rows:  # exact: the same samples give the same bits
        assert rows["openvino", "fp32"]["max_abs_diff_bits"] < 1e-4
    text = format_backends({"backends": doc}, "header")
    assert "x eager" in text and all(f"  {b} " in text for b in wanted)


def test_bench_puts_each_precision_beside_fp32_on_the_auto_backend(doc):
    from pda.engine.backends import resolve_backend

    bp = doc["backend_precision"]
    assert bp["backend"] == resolve_backend("auto", torch.device("cpu"))
    rows = {(r["backend"], r["precision"]): r for r in bp["rows"]}
    f32 = rows[bp["backend"], "fp32"]
    assert f32["x_fp32"] == 1.0
    assert f32["sweep_over_raw"] == pytest.approx(f32["passes_per_s"] / f32["images_per_s"])
    if (bp["backend"], "bf16") in rows:  # offered here: its ratio to fp32, side by side
        r = rows[bp["backend"], "bf16"]
        assert r["x_fp32"] == pytest.approx(r["passes_per_s"] / f32["passes_per_s"])
    else:  # not offered: listed, with why
        assert f"{bp['backend']} bf16" in bp["unavailable"]
    assert "precision on the auto backend" in format_table(doc)


def test_backend_bench_sweeps_the_sampler_asked_for():
    from pda.tools.bench_backends import format_backends, run_backend_bench

    model = wrap(ConvNet(classes=5), SIZE, classes=5)
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    doc = run_backend_bench(model, x, random_stats(), batch_size=4, backends=("torch",),
                            seconds=0.1, rounds=1, sampler_name="marginal")
    assert doc["sampler"] == "marginal"
    (row,) = doc["rows"]
    assert row["sweep_over_raw"] == pytest.approx(row["passes_per_s"] / row["images_per_s"])
    assert "marginal sweep" in format_backends({"backends": doc}, "header")
