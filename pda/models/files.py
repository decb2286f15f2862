"""User model files: ``NAME.pt2`` (torch.export) or TorchScript ``NAME.pt`` with a
sidecar ``NAME.json`` giving input size, normalisation and labels.

Model files are code: only load files an operator put there (the HTTP layer passes names,
never paths).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pda.settings import Settings

from ..errors import ModelLoadError, UnknownModelError

FILE_SUFFIXES = (".pt2", ".pt")


def first_line(e: BaseException) -> str:
    """Torch's errors span many lines; ours are one line (they end up in API responses)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


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


def load_file(path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    meta = read_sidecar(path)
    try:
        if path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()
            module.to(device)
        else:
            with warnings.catch_warnings():  # deprecated, and supported here on purpose
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location=device)
            module.eval()
    except Exception as e:  # torch raises many types for a bad archive
        raise ModelLoadError(f"cannot load model file {path.name}: {first_line(e)}") from e
    return module, meta


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
