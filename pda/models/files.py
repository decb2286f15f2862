"""User model files: ``NAME.pt2`` (torch.export) or TorchScript ``NAME.pt`` with a
sidecar ``NAME.json`` giving input size, normalisation and labels.

Model files are code: only load files an operator put there (the HTTP layer passes names,
never paths).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..catalog import read_sidecar
from ..errors import ModelLoadError


def first_line(e: BaseException) -> str:
    """Torch's errors span many lines; ours are one line (they end up in API responses)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


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
