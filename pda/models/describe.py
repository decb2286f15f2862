"""Model metadata from a loaded network: what the API validates against without torch.

``describe(model)`` runs one forward pass at batch 1 with a hook on every named module
and records each module's output size, so the catalogue can list layers (name, type,
channels, output size) and check ``layer``/``target`` at submit. Built-in models ship
this as data (``pda/data/models/NAME.json``, written by
``python -m pda.models.describe --write``); workers publish it for user model files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..catalog import BUILTIN_DIR, LABELS_FILE
from .registry import BUILTINS, LoadedModel, imagenet_labels, load_model


def layer_table(model: LoadedModel) -> list[dict[str, Any]]:
    """Every hookable module whose output is a tensor: name, type, channels, output size."""
    names = model.named_layers()
    if not names:
        return []
    seen: dict[str, dict[str, Any]] = {}
    handles = []
    for name in names:
        module = model.module.get_submodule(name)
        handles.append(module.register_forward_hook(_recorder(seen, name)))
    try:
        model(torch.zeros(1, 3, *model.input_size, device=model.device))
    finally:
        for h in handles:
            h.remove()
    return [seen[n] for n in names if n in seen]  # module order, not call order


def _recorder(seen: dict[str, dict[str, Any]], name: str):
    def hook(module, _inp, out) -> None:
        out = out[0] if isinstance(out, tuple | list) and out else out
        if isinstance(out, torch.Tensor) and out.dim() >= 2 and name not in seen:
            seen[name] = {"name": name, "type": type(module).__name__,
                          "channels": int(out.shape[1]),
                          "output_size": [int(s) for s in out.shape[1:]]}

    return hook


def describe(model: LoadedModel, description: str = "") -> dict[str, Any]:
    """The metadata document of one model (what :func:`pda.catalog.model_info` serves; the
    API's schema of it is :class:`service.schemas.ModelDetail`)."""
    return {
        "name": model.name,
        "description": description,
        "input_size": list(model.input_size),
        "mean": list(model.mean),
        "std": list(model.std),
        "num_classes": model.num_classes,
        "layers": layer_table(model),
    }


def write_builtins(folder: Path = BUILTIN_DIR) -> list[Path]:
    """(Re)write the shipped metadata of every built-in model and the ImageNet labels."""
    folder.mkdir(parents=True, exist_ok=True)
    LABELS_FILE.write_text(json.dumps(imagenet_labels()) + "\n")  # the models' labels first
    out = []
    for spec in BUILTINS.values():
        model = load_model(spec.name, "cpu", random_weights=True)  # the architecture only
        path = folder / f"{spec.name}.json"
        path.write_text(json.dumps(describe(model, spec.description), indent=1) + "\n")
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pda.models.describe")
    parser.add_argument("--write", action="store_true",
                        help=f"rewrite the built-in models' metadata in {BUILTIN_DIR}")
    args = parser.parse_args()
    if args.write:
        for path in write_builtins():
            print(path)


if __name__ == "__main__":
    main()
