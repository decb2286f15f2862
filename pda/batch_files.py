"""The files a batch of explanations adds to its items' own: folders, a summary, a contact sheet.

A batch (``pda explain DIR --out OUT`` on the command line, ``POST /v1/batches`` in the
service) writes each item's files (the result document, grids, overlays) in a folder of
its own, :func:`item_folder`, and beside them two files for a person to read first:

- ``summary.json`` (:func:`summary_document`): one :func:`summary_entry` per item, in
  upload order (file, status, top-1 class and probability, the faithfulness scores per
  target, forward passes, seconds, or the item's RFC 9457 problem document), the counts
  by status and the batch's parameters;
- ``contact-sheet.png`` (:func:`contact_sheet`): a grid of thumbnails of the items'
  overlays, each captioned (:func:`tile_caption`), a grey tile for an item that failed.

Both the CLI and the API build these from the result documents (pda.document), so the
two write the same summary. Pillow and the standard library only: no torch, no NumPy.
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SUMMARY = "summary.json"
CONTACT_SHEET = "contact-sheet.png"
#: an item folder keeps at most this many characters of the file's name (after the index)
NAME_CHARS = 60
#: a contact sheet has at most this many columns when the caller gives none
MAX_COLUMNS = 8
CAPTION_LINES = 2
FAILED_GREY = (200, 200, 200)
BACKGROUND = (255, 255, 255)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: a tile's image: PNG/JPEG bytes, None (the item failed or has no overlay), or a function
#: returning either, called when that tile is drawn (so that a caller holds one at a time)
TileImage = bytes | None | Callable[[], bytes | None]


def item_folder(index: int, filename: str | None) -> str:
    """The folder (and zip prefix) of item ``index``: ``0001-cat`` for index 1, ``cat.jpg``.

    Unique per index (the index leads, zero-padded to 4 digits so folders sort in upload
    order) and safe as a path part on any system: the directories of ``filename`` (``/``
    or ``\\``) and its extension are dropped, accents folded to ASCII, every other
    character outside ``A-Z a-z 0-9 . _ -`` becomes ``-``, leading dots go (no hidden or
    ``..`` folders) and at most :data:`NAME_CHARS` characters are kept. A name with
    nothing left (or none) gives ``0001-image``.
    """
    if index < 0:
        raise ValueError(f"item index {index} is negative")
    base = re.split(r"[\\/]", filename or "")[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    ascii_ = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    safe = _UNSAFE.sub("-", ascii_).strip(".-_")[:NAME_CHARS].rstrip(".-_")
    return f"{index:04d}-{safe or 'image'}"


def summary_entry(*, index: int, filename: str | None, status: str,
                  document: Mapping[str, Any] | None, error: Mapping[str, Any] | None,
                  seconds: float | None) -> dict[str, Any]:
    """One item's line of ``summary.json``.

    ``document`` is the item's result document (pda.document: with or without grids,
    stored or served) when it finished, else None; ``error`` its RFC 9457 problem document
    when it failed (kept whole); ``seconds`` the item's wall time as the caller measured
    it (None: the document's own ``stats.seconds``, the sweep's). Members: ``index``,
    ``file``, ``folder`` (:func:`item_folder`), ``status``, ``top1`` (``class_index``,
    ``label``, ``probability``; None without a document), ``targets`` (per explained
    target: ``target``, ``label`` and, when scored, ``deletion_auc``, ``insertion_auc``
    and ``baseline`` with the random-order AUCs), ``forward_passes``, ``seconds`` and
    ``error``.
    """
    top1 = targets = passes = None
    if document is not None:
        prediction = document.get("prediction") or []
        if prediction:
            p = prediction[0]
            top1 = {"class_index": p["class_index"], "label": p["label"],
                    "probability": p["probability"]}
        targets = [_target_scores(e) for e in document.get("explanations", [])]
        stats = document.get("stats") or {}
        passes = stats.get("forward_passes")
        if seconds is None:
            seconds = stats.get("seconds")
    return {
        "index": index, "file": filename, "folder": item_folder(index, filename),
        "status": status, "top1": top1, "targets": targets, "forward_passes": passes,
        "seconds": None if seconds is None else round(float(seconds), 3),
        "error": dict(error) if error is not None else None,
    }


def _target_scores(explanation: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"target": explanation["target"], "label": explanation["label"]}
    f = explanation.get("faithfulness")
    if f:
        out["deletion_auc"] = f["deletion_auc"]
        out["insertion_auc"] = f["insertion_auc"]
        if base := f.get("baseline"):
            out["baseline"] = {k: base[k] for k in ("deletion_auc", "insertion_auc")
                               if k in base}
    return out


def summary_document(entries: Iterable[Mapping[str, Any]],
                     params: Mapping[str, Any]) -> dict[str, Any]:
    """``summary.json``: ``items`` (the entries in index order), ``counts`` (``total`` and
    the number of items in each status, ``finished`` and ``failed`` always present) and
    ``params`` (the parameters the batch was explained with, as given)."""
    items = sorted((dict(e) for e in entries), key=lambda e: e["index"])
    counts: dict[str, int] = {"total": len(items), "finished": 0, "failed": 0}
    counts.update(Counter(e["status"] for e in items))
    return {"items": items, "counts": counts, "params": dict(params)}


def tile_caption(entry: Mapping[str, Any]) -> str:
    """A contact-sheet caption from a :func:`summary_entry`: the file name, then the top-1
    label and probability, ``failed: <the problem's title>`` or the status."""
    name = re.split(r"[\\/]", entry.get("file") or "")[-1] or entry.get("folder") or "?"
    if entry.get("top1"):
        t = entry["top1"]
        second = f"{t['label']} {t['probability']:.2f}"
    elif entry.get("error"):
        second = f"failed: {entry['error'].get('title', 'error')}"
    else:
        second = str(entry.get("status", ""))
    return f"{name}\n{second}"


def contact_sheet(tiles: Sequence[tuple[str, TileImage]], *, tile: int = 160,
                  columns: int | None = None) -> bytes:
    """A PNG grid of thumbnails, each ``tile`` pixels square with its caption below.

    ``tiles``: (caption, image) per item in order; the caption's first
    :data:`CAPTION_LINES` lines are drawn, each cut to the tile's width with an ellipsis.
    The image is PNG/JPEG bytes (an overlay), None, or a function returning either (so a
    caller reading overlays from storage holds one at a time); None or bytes that do not
    decode give a grey tile marked ``failed``. Each image is decoded and thumbnailed alone,
    so the memory is the sheet's pixels plus one image. ``columns`` defaults to
    ceil(sqrt(N)), at most :data:`MAX_COLUMNS`. No tiles: one blank tile saying so.
    """
    if tile < 32:
        raise ValueError(f"tile {tile} px is too small for a caption (at least 32)")
    n = len(tiles)
    cols = columns or min(MAX_COLUMNS, max(1, math.ceil(math.sqrt(n))))
    if cols < 1:
        raise ValueError(f"columns {cols} must be at least 1")
    cols = min(cols, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    font = _font(max(10, tile // 13))
    line = _line_height(font)
    pad = max(2, tile // 40)
    cell_w, cell_h = tile + 2 * pad, tile + 2 * pad + CAPTION_LINES * line + pad
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if n == 0:
        draw.text((pad, pad + tile // 2), "no items", fill=(0, 0, 0), font=font)
    for i, (caption, image) in enumerate(tiles):
        x0, y0 = (i % cols) * cell_w + pad, (i // cols) * cell_h + pad
        thumb = _thumbnail(image() if callable(image) else image, tile)
        if thumb is None:
            draw.rectangle((x0, y0, x0 + tile - 1, y0 + tile - 1), fill=FAILED_GREY)
            _centred(draw, "failed", x0, y0 + tile // 2 - line // 2, tile, font)
        else:
            sheet.paste(thumb, (x0 + (tile - thumb.width) // 2,
                                y0 + (tile - thumb.height) // 2))
            thumb.close()
        for k, text in enumerate(caption.splitlines()[:CAPTION_LINES]):
            draw.text((x0, y0 + tile + pad + k * line), _fit(draw, text, tile, font),
                      fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _thumbnail(data: bytes | None, tile: int) -> Image.Image | None:
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (tile, tile))  # JPEG: decode at a reduced scale
            im.thumbnail((tile, tile), Image.Resampling.LANCZOS)
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _line_height(font: Any) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom - min(top, 0)) + 3


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _centred(draw: ImageDraw.ImageDraw, text: str, x0: int, y: int, width: int,
             font: Any) -> None:
    w = draw.textlength(text, font=font)
    draw.text((x0 + max(0, (width - w) / 2), y), text, fill=(60, 60, 60), font=font)
