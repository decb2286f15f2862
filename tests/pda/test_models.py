"""Model registry: built-ins, user model files with sidecars, the cache, and listing."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from pda.catalog import list_models
from pda.engine.inputs import preprocess
from pda.errors import ModelLoadError, UnknownLayerError, UnknownModelError
from pda.images import open_image
from pda.models.registry import (
    BUILTINS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    get_model,
    load_model,
)
from pda.settings import Settings
from tests.support.models import clear_model_cache

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True)
def empty_hub_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point torch's checkpoint cache at an empty folder: results must not depend on
    whatever weights this machine happens to have downloaded."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path_factory.mktemp("hub")))
    clear_model_cache()
    yield
    torch.hub.set_dir(old)
    clear_model_cache()


class Tiny(nn.Module):
    """A small CNN whose logits we can recompute by hand from normalised input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def reference_logits(net: nn.Module, x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    with torch.no_grad():
        return net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))


def write_sidecar(path: Path, **overrides: object) -> None:
    meta: dict[str, object] = {"input_size": [16, 12], "mean": list(MEAN), "std": list(STD)}
    meta.update(overrides)
    path.with_suffix(".json").write_text(json.dumps(meta))


def export_pt2(path: Path, net: nn.Module, dynamic: bool = True) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    ep = torch.export.export(net.eval(), (torch.rand(2, 3, 16, 12),), dynamic_shapes=shapes)
    torch.export.save(ep, str(path))


def script_pt(path: Path, net: nn.Module) -> None:
    with warnings.catch_warnings():  # TorchScript is deprecated; legacy files still load
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(net.eval()).save(str(path))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    net = Tiny()
    export_pt2(tmp_path / "tiny.pt2", net)
    write_sidecar(tmp_path / "tiny.pt2")
    script_pt(tmp_path / "legacy.pt", net)
    write_sidecar(tmp_path / "legacy.pt", labels=list("abcde"))
    return tmp_path


# --- user model files -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "legacy"])
def test_model_file_gives_the_original_modules_logits(model_dir: Path, name: str) -> None:
    model = load_model(name, settings=Settings(model_dir=model_dir))
    x = torch.rand(3, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    assert model.input_size == (16, 12) and model.mean == MEAN and model.std == STD
    assert model.source == "file" and model.num_classes == 5
    torch.testing.assert_close(model(x), reference_logits(Tiny().eval(), x))


def test_labels_come_from_the_sidecar_or_default_to_class_numbers(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir)
    assert load_model("legacy", settings=settings).labels == list("abcde")
    assert load_model("tiny", settings=settings).labels == [f"class {i}" for i in range(5)]


def test_model_file_by_path_and_names_only_mode(model_dir: Path) -> None:
    path = str(model_dir / "tiny.pt2")
    assert load_model(path, settings=Settings()).name == "tiny"
    with pytest.raises(UnknownModelError, match="must be a name"):
        load_model(path, settings=Settings(), allow_paths=False)
    with pytest.raises(UnknownModelError, match="no such model file"):
        load_model(str(model_dir / "missing.pt2"), settings=Settings())


def test_exported_files_have_no_hookable_layers(model_dir: Path) -> None:
    model = load_model("tiny", settings=Settings(model_dir=model_dir))
    assert model.named_layers() == []
    with pytest.raises(UnknownLayerError, match="'output' or 'logits'"):
        model.get_layer("conv")


BAD_SIDECARS = {
    "bad JSON": ("{input_size: [16, 12]", "not valid JSON"),
    "not an object": ("[1, 2, 3]", "JSON object"),
    "mean has 2 values": ({"mean": [0.5, 0.5]}, "'mean' must be a list of 3 numbers"),
    "std is zero": ({"std": [0.2, 0.0, 0.2]}, "'std' must be a list of 3 positive numbers"),
    "input size missing": ({"input_size": None}, "'input_size' must be a list of 2"),
    "input size not integer": ({"input_size": [16.5, 12]}, "must be integers"),
    "labels not strings": ({"labels": [1, 2, 3, 4, 5]}, "list of strings"),
    "label count differs": ({"labels": ["a", "b"]}, "has 2 labels but the model returns 5"),
    "wrong input size": ({"input_size": [2, 2]}, "fails on a (1, 3, 2, 2) batch"),
}


@pytest.mark.parametrize("case", list(BAD_SIDECARS))
def test_bad_sidecar_raises_model_load_error(tmp_path: Path, case: str) -> None:
    content, message = BAD_SIDECARS[case]
    export_pt2(tmp_path / "m.pt2", nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1),
                                                 nn.Flatten()))
    if isinstance(content, str):
        (tmp_path / "m.json").write_text(content)
    else:
        write_sidecar(tmp_path / "m.pt2", **content)
    with pytest.raises(ModelLoadError) as info:
        load_model("m", settings=Settings(model_dir=tmp_path))
    assert message in str(info.value)


def test_missing_sidecar_corrupt_archive_and_static_batch_are_refused(tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path)
    script_pt(tmp_path / "nosidecar.pt", Tiny())
    with pytest.raises(ModelLoadError, match="needs a sidecar nosidecar.json"):
        load_model("nosidecar", settings=settings)
    (tmp_path / "corrupt.pt2").write_bytes(b"PK\x03\x04 definitely not a zip")
    write_sidecar(tmp_path / "corrupt.pt2")
    with pytest.raises(ModelLoadError, match="cannot load model file corrupt.pt2") as info:
        load_model("corrupt", settings=settings)
    assert "\n" not in str(info.value)
    export_pt2(tmp_path / "static.pt2", Tiny(), dynamic=False)  # batch fixed at 2
    write_sidecar(tmp_path / "static.pt2")
    with pytest.raises(ModelLoadError, match=r"fails on a \(1, 3, 16, 12\) batch.*dynamic"):
        load_model("static", settings=settings)


def test_unknown_model_raises_and_names_the_alternatives(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="built-in models: efficientnet_lite0, alexnet"):
        load_model("resnet9000", settings=Settings(model_dir=tmp_path))
    with pytest.raises(UnknownModelError, match="must end in .pt2 or .pt"):
        load_model("models/thing.onnx", settings=Settings())


# --- built-ins --------------------------------------------------------------------------


def test_torchvision_builtin_without_weights_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        load_model("alexnet", settings=Settings(weights_dir=tmp_path))
    msg = str(info.value)
    assert str(tmp_path / "alexnet.pth") in msg and "alexnet-owt-7be5be79.pth" in msg
    assert str(Path(torch.hub.get_dir()) / "checkpoints") in msg


def test_torchvision_weights_are_loaded_from_weights_dir(tmp_path: Path) -> None:
    import torchvision.models as tvm

    torch.manual_seed(3)
    net = tvm.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    torch.save(net.state_dict(), tmp_path / "googlenet-1378be20.pth")  # torchvision's name
    model = load_model("googlenet", settings=Settings(weights_dir=tmp_path))
    assert model.module.aux1 is None  # training-only heads dropped
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), reference_logits(net.eval(), x, IMAGENET_MEAN,
                                                          IMAGENET_STD))


def test_corrupt_builtin_weights_raise_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "resnet50.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load weights .*resnet50.pth") as info:
        load_model("resnet50", settings=Settings(weights_dir=tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_random_weight_builtins_return_imagenet_logits(name: str) -> None:
    model = load_model(name, random_weights=True, settings=Settings())
    out = model(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1000) and model.num_classes == 1000
    assert model.labels[285] == "Egyptian cat"


def test_efficientnet_normalises_pixels_before_the_module() -> None:
    model = load_model("efficientnet_lite0", settings=Settings())
    assert model.input_size == (224, 224) and model.mean == LITE_MEAN and model.std == LITE_STD
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), reference_logits(model.module, x, LITE_MEAN, LITE_STD))
    assert not model.module.training


def test_efficientnet_matches_the_reference_implementation() -> None:
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    model = load_model("efficientnet_lite0", settings=Settings())
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(model.module.state_dict())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), ref.eval()(x))


def test_layers_can_be_listed_and_looked_up() -> None:
    model = load_model("efficientnet_lite0", settings=Settings())
    names = model.named_layers()
    assert "_blocks.15" in names and "_conv_head" in names and "" not in names
    assert model.get_layer("_blocks.15") is model.module._blocks[15]
    with pytest.raises(UnknownLayerError, match=r"no layer 'block99'.*_conv_stem") as info:
        model.get_layer("block99")
    assert info.value.field == "layer"


@pytest.mark.slow
def test_efficientnet_recognises_chelsea_as_an_egyptian_cat() -> None:
    model = load_model("efficientnet_lite0", settings=Settings())
    img = open_image(EXAMPLES / "chelsea.png")
    x, box = preprocess(img, model.input_size, fit="crop")
    assert box == (75, 0, 375, 300)
    p = model(x[None]).softmax(dim=1)[0]
    top = p.topk(3)
    assert [model.labels[i] for i in top.indices] == ["Egyptian cat", "tiger cat", "tabby"]
    # the contract's crop loses part of the cat, so the model is less sure than on the
    # whole photo; squashing the full image to 224 x 224 gives the familiar ~0.77
    assert 0.33 < float(top.values[0]) < 0.43
    whole, _ = preprocess(img.resize((224, 224), resample=3),  # bicubic
                          model.input_size, fit="crop")
    p_whole = model(whole[None]).softmax(dim=1)[0]
    assert int(p_whole.argmax()) == 285 and 0.6 < float(p_whole[285]) < 0.9


# --- listing and cache -------------------------------------------------------------------


def test_list_models_lists_builtins_without_loading(tmp_path: Path) -> None:
    (tmp_path / "alexnet.pth").write_bytes(b"not loaded by list_models")
    entries = {m["name"]: m for m in list_models(Settings(weights_dir=tmp_path))}
    assert list(entries) == list(BUILTINS)
    lite = entries["efficientnet_lite0"]
    assert lite == {**lite, "source": "builtin", "available": True, "default": True,
                    "input_size": [224, 224], "num_classes": 1000}
    assert entries["alexnet"]["available"] is True  # a file is there
    assert entries["vgg16"]["available"] is False and entries["vgg16"]["default"] is False


def test_list_models_lists_model_files_and_flags_broken_ones(model_dir: Path) -> None:
    (model_dir / "broken.pt").write_bytes(b"")
    (model_dir / "broken.json").write_text("{")
    files = {m["name"]: m for m in list_models(Settings(model_dir=model_dir))
             if m["source"] == "file"}
    assert sorted(files) == ["broken", "legacy", "tiny"]
    assert files["tiny"]["input_size"] == [16, 12] and files["tiny"]["num_classes"] is None
    assert files["legacy"]["num_classes"] == 5 and files["legacy"]["available"] is True
    assert files["broken"]["available"] is False
    assert "not valid JSON" in files["broken"]["description"]


def test_get_model_returns_the_same_loaded_object(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir)
    first = get_model("tiny", "cpu", settings)
    assert get_model("tiny", "cpu", settings) is first
    assert get_model("legacy", "cpu", settings) is not first
    clear_model_cache()
    assert get_model("tiny", "cpu", settings) is not first
