"""``pda.explain``: the CLI's explanation as a function, with the CLI's defaults (issue 19)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pda
from pda.cli import main
from pda.engine.backends import resolve_backend
from pda.errors import InvalidParameterError
from pda.params import ExplainParams
from pda.settings import Settings
from tests.support.toys import ConvNet

SIZE = 64  # the default 32 px window fits, at 25 windows
NORM = dict(input_size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((80, 120, 3)) * 255).astype(np.uint8))


def test_import_pda_loads_no_torch():
    code = "import sys, pda; assert 'torch' not in sys.modules; print(callable(pda.explain))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"  # and explain loads it on first use


def test_a_module_gets_the_clis_defaults(tmp_path):
    result = pda.explain(photo(), ConvNet(classes=5), settings=Settings(
        backend_cache_dir=tmp_path), **NORM)
    defaults = ExplainParams()
    assert result.document["params"] == {**result.document["params"],
                                         **defaults.model_dump(exclude={"fill"})}
    assert result.document["params"]["fit"] == "squash" and len(result.targets) == 3
    assert result.explanation.runtime["backend"] == resolve_backend("auto",
                                                                    torch.device("cpu"))
    assert result.explanation.faithfulness is not None  # scored, as the CLI does
    assert result.relevance.shape == (3, SIZE, SIZE) and result.relevance.dtype == np.float32
    assert result.prediction[0]["class_index"] == result.targets[0]
    grids = result.result["explanations"][0]["relevance"]
    assert np.allclose(np.array(grids), result.relevance[0], atol=1e-5)


def test_a_path_bytes_and_a_pil_image_are_the_same_input(tmp_path):
    path = tmp_path / "p.png"
    photo().save(path)
    quick = dict(window=16, stride=16, samples=1, faithfulness=False, backend="torch", **NORM)
    module = ConvNet(classes=5)
    maps = [pda.explain(src, module, **quick).relevance
            for src in (path, str(path), path.read_bytes(), Image.open(io.BytesIO(
                path.read_bytes())))]
    for m in maps[1:]:
        np.testing.assert_array_equal(m, maps[0])


def test_the_library_and_the_cli_give_the_same_result_for_a_model_file(tmp_path):
    net = ConvNet(classes=4).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(net, (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, tmp_path / "mine.pt2")
    (tmp_path / "mine.json").write_text(json.dumps({"input_size": [SIZE, SIZE], **{
        k: list(v) for k, v in NORM.items() if k != "input_size"}}))
    (tmp_path / "p.png").write_bytes(_png())
    flags = ["--window", "16", "--stride", "16", "--samples", "2", "--backend", "torch"]
    assert main(["explain", str(tmp_path / "p.png"), "--model", str(tmp_path / "mine.pt2"),
                 *flags, "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    lib = pda.explain(tmp_path / "p.png", str(tmp_path / "mine.pt2"), window=16, stride=16,
                      samples=2, backend="torch").result
    for doc in (cli, lib):
        doc["stats"].pop("seconds")
        doc["runtime"]["faithfulness"].pop("passes_per_second")  # measured, not computed
        for e in doc["explanations"]:
            e["faithfulness"].pop("seconds", None)
    assert lib == cli


def _png() -> bytes:
    buf = io.BytesIO()
    photo().save(buf, format="PNG")
    return buf.getvalue()


def test_a_module_in_training_goes_back_to_training():
    module = ConvNet(classes=5).train()
    pda.explain(photo(), module, window=16, stride=16, samples=1, faithfulness=False,
                backend="torch", **NORM)
    assert module.training


@pytest.mark.parametrize(("kwargs", "field"), [
    ({}, "model"),  # a module without its input size and normalisation
    ({**NORM, "window": 0}, "window"),
    ({**NORM, "windows": 8}, "windows"),
    ({**NORM, "labels": ["a", "b"]}, "labels"),
])
def test_caller_mistakes_are_clear_errors(kwargs, field):
    with pytest.raises(InvalidParameterError) as info:
        pda.explain(photo(), ConvNet(classes=5), backend="torch", **kwargs)
    assert info.value.field == field


def test_input_size_with_a_model_name_is_refused():
    with pytest.raises(InvalidParameterError, match="go with a torch.nn.Module"):
        pda.explain(photo(), "efficientnet_lite0", **NORM)
