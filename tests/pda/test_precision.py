"""Precision ``auto``: bf16 only where the device runs it natively and its measured error
is within the bar (docs/performance.md, "Precision"); fp32 stays exact; the result
document records the precision and, for an approximation, its measured bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda import defaults
from pda.engine import backends
from pda.engine.backends import native_bf16, precision_error, resolve_precision, within_bar
from pda.engine.explain import explain
from pda.errors import InvalidParameterError
from pda.params import ExplainParams
from pda.runtime import Runtime
from pda.settings import Settings
from tests.support.toys import ConvNet, random_stats, wrap

CPU = torch.device("cpu")
SIZE = 16
#: a bound that passes the bar and one that does not (the measured one is in defaults)
PASSES = {"seed_ratio": 0.02, "peak_share": 0.004, "photos": 6,
          "see": "docs/performance.md#precision"}
FAILS = {**PASSES, "seed_ratio": 0.3}


def test_auto_is_a_choice_and_unknown_precisions_are_still_refused():
    assert Runtime(precision="auto").precision == "auto"
    assert Settings(precision="auto").precision == "auto"
    assert Runtime().precision == defaults.DEFAULT_PRECISION
    with pytest.raises(InvalidParameterError) as err:
        Runtime(precision="int8")
    assert err.value.field == "precision"


@pytest.mark.parametrize("native,bound,expected", [
    (True, PASSES, "bf16"),   # native and measured within the bar
    (False, PASSES, "fp32"),  # no native bf16: emulated bf16 is slower, never chosen
    (True, FAILS, "fp32"),    # native, but its error is not below a tenth of the noise
    (True, None, "fp32"),     # native, never measured
])
def test_auto_takes_bf16_only_with_native_support_and_a_bound_within_the_bar(
        monkeypatch, native, bound, expected):
    monkeypatch.setitem(defaults.PRECISION_ERROR, "bf16", bound)
    monkeypatch.setattr(backends, "PRECISION_ERROR", defaults.PRECISION_ERROR)
    monkeypatch.setattr(backends, "native_bf16", lambda device, backend: native)
    assert resolve_precision("auto", CPU, "openvino") == expected
    # an explicit choice is never changed
    for p in defaults.PRECISIONS:
        assert resolve_precision(p, CPU, "openvino") == p


def test_native_bf16_is_openvino_reporting_bf16_on_a_cpu(monkeypatch):
    monkeypatch.setattr(backends.openvino_backend, "offers", lambda p: p == "bf16")
    assert native_bf16(CPU, "openvino")
    # torch's CPU autocast is not native bf16 here (measured 0.94x fp32 without AMX)
    assert not native_bf16(CPU, "torch") and not native_bf16(CPU, "compile")
    monkeypatch.setattr(backends.openvino_backend, "offers", lambda p: p == "fp32")
    assert not native_bf16(CPU, "openvino")


def test_native_bf16_on_cuda_asks_torch_for_hardware_bf16(monkeypatch):
    cuda = torch.device("cuda", 0)
    asked = {}

    def supported(including_emulation=True):
        asked["emulation"] = including_emulation
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert native_bf16(cuda, "compile") and asked == {"emulation": False}
    assert not native_bf16(cuda, "openvino")


def test_the_bar_is_a_tenth_of_the_seed_noise_and_a_percent_of_the_peak(monkeypatch):
    monkeypatch.setitem(defaults.PRECISION_ERROR, "bf16", PASSES)
    assert within_bar("bf16")
    monkeypatch.setitem(defaults.PRECISION_ERROR, "bf16", {**PASSES, "peak_share": 0.02})
    assert not within_bar("bf16")
    monkeypatch.setitem(defaults.PRECISION_ERROR, "bf16", {**PASSES, "seed_ratio": 0.1})
    assert not within_bar("bf16")  # strictly below
    assert not within_bar("fp16")  # never measured


def test_the_measured_bf16_bound_in_the_defaults_is_what_auto_reads():
    err = defaults.PRECISION_ERROR["bf16"]
    assert err is not None and err["see"] == "docs/performance.md#precision"
    assert within_bar("bf16") == (err["seed_ratio"] < 0.1 and err["peak_share"] < 0.01)


def _explain(precision: str):
    model = wrap(ConvNet(classes=5), SIZE, classes=5)
    x = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    params = ExplainParams(window=4, stride=2, samples=2, target="top2", faithfulness=False)
    return explain(model, x, params, random_stats(),
                   runtime=Runtime(batch_size=8, backend="torch", precision=precision))


def test_auto_without_native_bf16_is_fp32_bit_for_bit_and_records_no_error(monkeypatch):
    monkeypatch.setattr(backends, "native_bf16", lambda device, backend: False)
    ref, got = _explain("fp32"), _explain("auto")
    assert got.runtime["precision"] == "fp32" and "precision_error" not in got.runtime
    assert "precision_error" not in ref.runtime
    np.testing.assert_array_equal(got.relevance, ref.relevance)


def test_auto_with_native_bf16_runs_bf16_and_the_document_records_its_bound(monkeypatch):
    from pda.document import result_document

    monkeypatch.setitem(defaults.PRECISION_ERROR, "bf16", PASSES)
    monkeypatch.setattr(backends, "native_bf16", lambda device, backend: True)
    ref, got = _explain("fp32"), _explain("auto")
    assert got.runtime["precision"] == "bf16"
    assert got.runtime["precision_error"] == {"measured": True, **PASSES}
    # an approximation: the same map in its shape, not equal to fp32's
    assert np.abs(got.relevance - ref.relevance).max() > 0
    assert np.corrcoef(got.relevance.ravel(), ref.relevance.ravel())[0, 1] > 0.8
    doc = result_document(got, model_name="toy", input_size=(SIZE, SIZE),
                          image_size=(SIZE, SIZE), crop_box=(0, 0, SIZE, SIZE),
                          params=ExplainParams(window=4, stride=2, samples=2, target="top2",
                                               faithfulness=False))
    assert doc["runtime"]["precision"] == "bf16"
    assert doc["runtime"]["precision_error"]["seed_ratio"] == PASSES["seed_ratio"]


def test_an_unmeasured_reduced_precision_says_so():
    assert precision_error("fp32") is None
    assert precision_error("fp16") == {"measured": False, "see": "docs/performance.md#precision"}
