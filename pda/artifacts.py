"""The files of one explanation, as bytes: what the worker stores and the CLI writes.

The store keeps the compact files of :mod:`pda.document`; the CLI writes the contract's
``result.json``, ``relevance.npy``, ``input.png`` and one ``overlay-<target>.png`` each,
rendered by the same functions the API uses to serve them.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

from . import document as docs
from .render import image_png, render_overlay

Explanation = Any  # pda.engine.explain.Explanation: relevance (T,H,W), counts (H,W), targets


def overlay_name(target: int) -> str:
    return f"overlay-{target}.png"


def stored_files(expl: Explanation, image: np.ndarray, photo: Image.Image,
                 document: dict[str, Any]) -> dict[str, bytes]:
    """What a finished job keeps (``document.STORED``). ``image`` is the model input
    (H, W, 3) uint8, ``photo`` the uploaded photo, ``document`` without grids."""
    return {
        docs.DOCUMENT: json.dumps(document).encode(),
        docs.GRIDS: docs.pack_grids(expl.relevance, expl.counts),
        docs.INPUT: image_png(image),
        docs.PHOTO: docs.photo_copy(photo),
    }


def cli_files(stored: dict[str, bytes], scale: str = "shared") -> dict[str, bytes]:
    """``result.json``, ``relevance.npy``, ``input.png`` and the overlays, from the stored
    files (so the CLI and the API render the same bytes)."""
    document = json.loads(stored[docs.DOCUMENT])
    relevance, counts = docs.unpack_grids(stored[docs.GRIDS])
    files = {
        "result.json": docs.result_json(document, relevance),
        "relevance.npy": docs.npy_bytes(relevance),
        "input.png": stored[docs.INPUT],
    }
    photo = Image.open(io.BytesIO(stored[docs.PHOTO]))
    for i, e in enumerate(document["explanations"]):
        files[overlay_name(e["target"])] = render_overlay(
            document, relevance, counts, i, photo=photo, scale=scale)
    return files
