"""The Runtime object: the runtime choices built once from the settings and passed down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pda.errors import InvalidParameterError
from pda.runtime import Runtime
from pda.settings import Settings


def test_from_settings_takes_the_deployments_choices_and_explicit_ones_win():
    s = Settings(backend="torch", precision="bf16", device="cpu", batch_size=6,
                 backend_cache_dir="/tmp/pda-cache", incremental="off")
    rt = Runtime.from_settings(s)
    assert rt == Runtime(backend="torch", precision="bf16", device="cpu", batch_size=6,
                         cache_dir=Path("/tmp/pda-cache"), incremental="off")
    # None leaves a field as the settings have it; a value replaces it
    assert Runtime.from_settings(s, backend=None, batch_size=None) == rt
    assert Runtime.from_settings(s, backend="openvino", precision="fp32").backend == "openvino"
    assert rt.replace(batch_size=2).batch_size == 2 and rt.batch_size == 6  # frozen


def test_the_compile_switch_is_a_deprecated_spelling_of_the_compile_backend():
    with pytest.warns(FutureWarning, match="use backend 'compile'"):
        assert Runtime.from_settings(Settings(compile=True)).backend == "compile"
    # an explicit backend is not overridden by the old switch
    assert Runtime.from_settings(Settings(compile=True, backend="torch")).backend == "torch"


@pytest.mark.parametrize("field,value", [("backend", "tensorrt"), ("precision", "int8"),
                                         ("incremental", "maybe"), ("batch_size", 0)])
def test_a_bad_choice_names_its_field(field, value):
    with pytest.raises(InvalidParameterError) as err:
        Runtime(**{field: value})
    assert err.value.field == field and str(value) in str(err.value)


def test_the_runtime_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, pda.runtime; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_the_library_records_what_the_runtime_chose(monkeypatch):
    import torch

    import pda
    from tests.support.toys import ConvNet

    net = ConvNet(classes=3).eval()
    img = (torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0)) * 255).byte()
    from PIL import Image

    photo = Image.fromarray(img.permute(1, 2, 0).numpy())
    kw = dict(input_size=(16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), window=8,
              stride=8, sampler="constant", target="0", faithfulness=False)
    plain = pda.explain(photo, net, backend="torch", batch_size=3, **kw)
    assert plain.document["runtime"]["backend"] == "torch"
    asked = []

    def no_compiler(module, **_kw):  # compiling takes minutes on 2 cores: refuse, quickly
        asked.append(module)
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(FutureWarning, match="compile=True"):
        old = pda.explain(photo, net, compile=True, batch_size=3, **kw)
    assert asked  # the old switch asked for the compile backend ...
    assert old.document["runtime"]["backend"] == "torch"  # ... which fell back to eager
    assert (old.relevance == plain.relevance).all()
