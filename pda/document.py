"""The result of one explanation: its document, as built, stored and served, and its files.

:func:`result_document` builds the contract's result document (without its grids) from
an explanation. A finished job keeps four small files (``STORED``, :func:`stored_files`):
the result document without its grids (``document.json``), the grids as compressed
float32 (``grids.npz``), the input as the model saw it (``input.png``) and a display copy
of the uploaded photo (``photo.jpg``). The stored document also keeps, under
``STORED_ONLY``, what rendering needs and the contract does not show (the content box);
:func:`served` strips it. The contract's ``result.json`` (grids as JSON),
``relevance.npy`` and the overlay PNGs are rendered from these on request (the API) or
at once (the CLI, :func:`cli_files`): a 3-target job at the default settings stores a few
hundred kB instead of megabytes of JSON text (docs/reliability.md).

No torch here: the API serves results with this module alone (the engine hands its
explanation over as NumPy arrays).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

from .params import ExplainParams
from .render import content_box_of, image_png, render_overlay

Explanation = Any  # pda.engine.explain.Explanation: relevance (T,H,W), counts (H,W), targets

DOCUMENT = "document.json"
GRIDS = "grids.npz"
INPUT = "input.png"
PHOTO = "photo.jpg"
STORED = (DOCUMENT, GRIDS, INPUT, PHOTO)
#: the stored document's member that is not served: {"content_box": [l, t, r, b]}, the
#: placement of the model input's content (input pixels) the overlays are drawn with
STORED_ONLY = "stored"
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


def result_document(
    expl: Explanation,
    *,
    model_name: str,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    crop_box: tuple[int, int, int, int],
    params: ExplainParams,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """The contract's result document without its grids (:func:`with_grids` adds them:
    ``result.json`` and the relevance endpoint). ``expl``'s maps are NumPy arrays."""
    p = params.model_dump()
    p["fill"] = list(p["fill"]) if p["fill"] is not None else None
    p["laplace"] = {"train_size": params.train_size, "num_classes": num_classes}
    return {
        "model": {"name": model_name, "input_size": list(input_size)},
        "image": {"width": image_size[0], "height": image_size[1], "crop_box": list(crop_box)},
        "params": p,
        "prediction": expl.prediction,
        "explanations": [
            {"target": t, "label": lab, "unit": expl.unit,
             "max_abs": float(np.abs(expl.relevance[i]).max()),
             **({"faithfulness": expl.faithfulness[i]} if expl.faithfulness else {})}
            for i, (t, lab) in enumerate(zip(expl.targets, expl.labels, strict=True))
        ],
        "coverage": coverage(expl.counts, params.window, params.stride),
        "stats": {"forward_passes": expl.forward_passes, "seconds": round(expl.seconds, 3),
                  "faithfulness_passes": expl.faithfulness_passes},
        **({"approximation": expl.approximation} if expl.approximation else {}),
        **({"runtime": expl.runtime} if expl.runtime else {}),
    }


def stored_document(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` as ``document.json`` keeps it: with its content box (``STORED_ONLY``),
    placed once here rather than on every overlay request."""
    return {**document, STORED_ONLY: {"content_box": list(content_box_of(document))}}


def served(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the contract shows it (without ``STORED_ONLY``)."""
    return {k: v for k, v in document.items() if k != STORED_ONLY}


def content_box(document: dict[str, Any], fit: str | None = None) -> tuple[int, int, int, int]:
    """The content box the overlays use: the stored one, else (a result stored before it
    was kept) placed again from ``fit`` (the job's) or the document's own fit."""
    box = (document.get(STORED_ONLY) or {}).get("content_box")
    if box:
        return tuple(box)  # type: ignore[return-value]
    return content_box_of(document, fit)


def with_grids(document: dict[str, Any], relevance: np.ndarray) -> dict[str, Any]:
    """The contract's result document: ``document`` with each explanation's H x W grid."""
    doc = served(document)
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


def overlay_name(target: int) -> str:
    return f"overlay-{target}.png"


def stored_files(expl: Explanation, image: np.ndarray, photo: Image.Image,
                 document: dict[str, Any]) -> dict[str, bytes]:
    """What a finished job keeps (``STORED``). ``image`` is the model input (H, W, 3)
    uint8, ``photo`` the uploaded photo, ``document`` without grids."""
    return {
        DOCUMENT: json.dumps(stored_document(document)).encode(),
        GRIDS: pack_grids(expl.relevance, expl.counts),
        INPUT: image_png(image),
        PHOTO: photo_copy(photo),
    }


def cli_files(stored: dict[str, bytes], scale: str = "shared") -> dict[str, bytes]:
    """``result.json``, ``relevance.npy``, ``input.png`` and the overlays, from the stored
    files (so the CLI and the API render the same bytes)."""
    document = json.loads(stored[DOCUMENT])
    relevance, counts = unpack_grids(stored[GRIDS])
    files = {
        "result.json": result_json(document, relevance),
        "relevance.npy": npy_bytes(relevance),
        "input.png": stored[INPUT],
    }
    for i, e in enumerate(document["explanations"]):
        files[overlay_name(e["target"])] = photo_overlay(
            document, relevance, counts, i, stored[PHOTO], scale=scale)
    return files


def photo_overlay(document: dict[str, Any], relevance: np.ndarray, counts: np.ndarray,
                  index: int, photo_png: bytes, *, scale: str = "shared",
                  side: int | None = None, fit: str | None = None) -> bytes:
    """The overlay PNG of explanation ``index`` over the whole photo, from the stored
    files: the one drawing the CLI writes, the API serves and a batch archive holds.
    ``side``: pixels on the photo's longer side; by default the uploaded photo's own size,
    at most :data:`PHOTO_MAX_SIDE` (the stored display copy is resampled to it)."""
    longer = max(document["image"]["width"], document["image"]["height"])
    return render_overlay(document, relevance, counts, index,
                          photo=Image.open(io.BytesIO(photo_png)), scale=scale,
                          content_box=content_box(document, fit),
                          side=side or min(longer, PHOTO_MAX_SIDE))
