"""The result of one explanation as stored and as served.

A finished job keeps four small files (``STORED``): the result document without its
grids (``document.json``), the grids as compressed float32 (``grids.npz``), the input as
the model saw it (``input.png``) and a display copy of the uploaded photo (``photo.jpg``).
The contract's ``result.json`` (grids as JSON), ``relevance.npy`` and the overlay PNGs
are rendered from these on request: a 3-target job at the default settings stores a few
hundred kB instead of megabytes of JSON text (docs/reliability.md).

No torch here: the API serves results with this module alone.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

DOCUMENT = "document.json"
GRIDS = "grids.npz"
INPUT = "input.png"
PHOTO = "photo.jpg"
STORED = (DOCUMENT, GRIDS, INPUT, PHOTO)
#: the display copy of the photo keeps at most this many pixels on its longer side
PHOTO_MAX_SIDE = 1024
#: digits the JSON grids keep (float32 holds about 7)
JSON_DECIMALS = 6


def pack_grids(relevance: np.ndarray, counts: np.ndarray) -> bytes:
    """(T, H, W) float32 relevance and (H, W) window counts, zip-compressed."""
    buf = io.BytesIO()
    np.savez_compressed(buf, relevance=relevance.astype(np.float32),
                        counts=counts.astype(np.uint16 if counts.max(initial=0) < 65536
                                             else np.uint32))
    return buf.getvalue()


def unpack_grids(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return z["relevance"], z["counts"].astype(np.int32)


def npy_bytes(relevance: np.ndarray) -> bytes:
    """``relevance.npy``: the grids as a float32 array (T, H, W)."""
    buf = io.BytesIO()
    np.save(buf, relevance.astype(np.float32))
    return buf.getvalue()


def with_grids(document: dict[str, Any], relevance: np.ndarray) -> dict[str, Any]:
    """The contract's result document: ``document`` with each explanation's H x W grid."""
    doc = dict(document)
    doc["explanations"] = [
        {**e, "relevance": np.round(relevance[i], JSON_DECIMALS).tolist()}
        for i, e in enumerate(document["explanations"])
    ]
    return doc


def result_json(document: dict[str, Any], relevance: np.ndarray) -> bytes:
    return json.dumps(with_grids(document, relevance)).encode()


def coverage(counts: np.ndarray, window: int, stride: int) -> dict[str, Any]:
    """How much of the input the windows cover, with a warning when not all of it."""
    uncovered = int((counts == 0).sum())
    covered = 1.0 - uncovered / counts.size
    out: dict[str, Any] = {"uncovered_pixels": uncovered, "covered_fraction": covered}
    if uncovered:
        out["warning"] = (
            f"only {covered:.0%} of the input is covered by windows (window {window}, stride "
            f"{stride}): the {uncovered} uncovered pixels have relevance 0 and mean nothing; "
            "use a stride no larger than the window, ideally one that divides "
            "(input size - window)")
    return out


def photo_copy(img: Image.Image, max_side: int = PHOTO_MAX_SIDE) -> bytes:
    """A JPEG display copy of the uploaded photo, at most ``max_side`` pixels long."""
    copy = img.convert("RGB")
    if max(copy.size) > max_side:
        scale = max_side / max(copy.size)
        copy = copy.resize((max(1, round(copy.width * scale)),
                            max(1, round(copy.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    copy.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def faithfulness_summary(f: dict[str, Any]) -> dict[str, Any]:
    """An explanation's ``faithfulness`` without its curves (the job resource's copy)."""
    return {"deletion_auc": f["deletion_auc"], "insertion_auc": f["insertion_auc"],
            "baseline": {k: f["baseline"][k] for k in ("deletion_auc", "insertion_auc")},
            "fill": f["protocol"]["fill"], "step": f["protocol"]["step"]}
