"""The files of one explanation, as bytes: what the CLI writes and the worker stores."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from .engine.explain import Explanation
from .render import image_png, overlay_png


def overlay_name(target: int) -> str:
    return f"overlay-{target}.png"


def build_artifacts(
    expl: Explanation, image: np.ndarray, document: dict[str, Any]
) -> dict[str, bytes]:
    """``result.json``, ``input.png``, ``relevance.npy`` and one overlay per target.

    ``image`` is the model input (H, W, 3) uint8. ``relevance.npy`` holds the (T, H, W)
    float32 grids in the order of ``document["explanations"]``.
    """
    files: dict[str, bytes] = {
        "result.json": json.dumps(document).encode(),
        "input.png": image_png(image),
    }
    unit = "bits" if expl.unit == "bits" else "activation"
    for i, (t, label) in enumerate(zip(expl.targets, expl.labels, strict=True)):
        title = f"{label} ({t}): red for, blue against"
        files[overlay_name(t)] = overlay_png(expl.relevance[i], image, title=title, unit=unit)
    buf = io.BytesIO()
    np.save(buf, expl.relevance.astype(np.float32))
    files["relevance.npy"] = buf.getvalue()
    return files
