"""Overlays: relevance over a greyscale copy of the input, with a colour bar.

Red = evidence for, blue = against, white = 0, on a symmetric scale [-m, m] with
m = max |relevance| (matplotlib's "seismic" map, as the authors use; docs/algorithm.md §6).
Written with Pillow alone so the worker needs no plotting library.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .defaults import DEFAULT_FIT
from .images import placement

# matplotlib "seismic": dark blue, blue, white, red, dark red at 0, .25, .5, .75, 1
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array(
    [[0.0, 0.0, 0.3], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]]
)
SCALE = 2  # draw the model-input grid at twice its size so a person can see it
BAR_WIDTH = 110
TITLE_HEIGHT = 28


def seismic(t: np.ndarray) -> np.ndarray:
    """Map t in [0, 1] (0.5 = zero relevance) to RGB floats, shape t.shape + (3,)."""
    t = np.clip(t, 0.0, 1.0)
    return np.stack([np.interp(t, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)


def symmetric_scale(relevance: np.ndarray) -> float:
    m = float(np.abs(relevance).max()) if relevance.size else 0.0
    return m if m > 0 else 1.0


def heat_rgb(relevance: np.ndarray, image: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Blend the coloured map over greyscale ``image`` (H, W, 3) uint8 -> (H, W, 3) uint8."""
    m = symmetric_scale(relevance) if vmax is None else vmax
    t = relevance / (2 * m) + 0.5
    colour = seismic(t)  # (H, W, 3)
    grey = (image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None] / 255.0
    alpha = 0.35 + 0.55 * np.clip(np.abs(relevance) / m, 0, 1)[..., None]
    out = grey * (1 - alpha) + colour * alpha
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _fmt(v: float) -> str:
    return f"{v:+.3g}" if v else "0"


def fit_side(width: int, height: int, side: int) -> tuple[int, int]:
    """(w, h) with the longer side ``side`` and the aspect of ``width`` x ``height``."""
    f = side / max(width, height)
    return max(1, round(width * f)), max(1, round(height * f))


def overlay_png(
    relevance: np.ndarray, image: np.ndarray, *, title: str, unit: str,
    vmax: float | None = None, side: int | None = None,
) -> bytes:
    """The overlay for one target over the model input, as PNG bytes: title, map, colour
    bar in ``unit``; drawn at :data:`SCALE` times the input size, or ``side`` pixels on
    its longer side."""
    H, W = relevance.shape
    m = symmetric_scale(relevance) if vmax is None else vmax
    size = (W * SCALE, H * SCALE) if side is None else fit_side(W, H, side)
    heat = Image.fromarray(heat_rgb(relevance, image, m)).resize(size, Image.NEAREST)
    return _framed(heat, title=title, unit=unit, m=m)


def photo_overlay_png(
    relevance: np.ndarray, counts: np.ndarray, photo: Image.Image, image: dict, *,
    title: str, unit: str, vmax: float | None = None,
) -> bytes:
    """The overlay for one target over the whole uploaded photo (its display copy).

    ``image`` is the result document's ``image`` entry: the photo's size, the ``crop_box``
    the model saw (photo pixels) and the ``content_box`` it filled (input pixels). The
    map is resampled from the input onto the crop box; whatever the model did not see
    (outside the crop box) or no window covered is greyed and hatched: unexplained."""
    photo = photo.convert("RGB")
    w, h = photo.size
    f = w / image["width"]  # display copy scale
    left, top, right, bottom = (round(v * f) for v in image["crop_box"])
    cl, ct, cr, cb = image.get("content_box") or (0, 0, *relevance.shape[::-1])
    bw, bh = max(1, right - left), max(1, bottom - top)
    rel = Image.fromarray(relevance[ct:cb, cl:cr].astype(np.float32), mode="F").resize(
        (bw, bh), Image.BILINEAR)
    cov = Image.fromarray((counts[ct:cb, cl:cr] > 0).astype(np.uint8) * 255).resize(
        (bw, bh), Image.NEAREST)
    m = symmetric_scale(relevance) if vmax is None else vmax
    rel_full = np.zeros((h, w), np.float32)
    seen = np.zeros((h, w), bool)
    rel_full[top:top + bh, left:left + bw] = np.asarray(rel)[: h - top, : w - left]
    seen[top:top + bh, left:left + bw] = np.asarray(cov)[: h - top, : w - left] > 0
    out = heat_rgb(np.where(seen, rel_full, 0.0), np.asarray(photo), m)
    out[~seen] = _unexplained(np.asarray(photo))[~seen]
    return _framed(Image.fromarray(out), title=title, unit=unit, m=m,
                   note="hatched: not explained (outside the model's view or no window)"
                   if not seen.all() else None)


def _unexplained(image: np.ndarray) -> np.ndarray:
    """Greyed, darkened and hatched: pixels the explanation says nothing about."""
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H, W)
    out = (grey * 0.45 + 40)[..., None].repeat(3, axis=2)
    yy, xx = np.indices(grey.shape)
    out[(xx + yy) % 12 < 2] = 235  # diagonal hatching
    return np.clip(out, 0, 255).astype(np.uint8)


def _framed(heat: Image.Image, *, title: str, unit: str, m: float,
            note: str | None = None) -> bytes:
    """``heat`` under a title, beside a colour bar from -m to +m in ``unit``; PNG bytes."""
    W, H = heat.size
    foot = 20 if note else 0
    canvas = Image.new("RGB", (W + BAR_WIDTH, H + TITLE_HEIGHT + foot), "white")
    canvas.paste(heat, (0, TITLE_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 6), title, fill="black", font=_font(15))
    if note:
        draw.text((6, TITLE_HEIGHT + H + 3), note, fill="black", font=_font(12))
    # colour bar: top = +m (evidence for), bottom = -m (against)
    bar_h = max(40, H - 36)
    x0, y0 = W + 10, TITLE_HEIGHT + 10
    ramp = seismic(np.linspace(1, 0, bar_h))[:, None, :].repeat(18, axis=1)
    canvas.paste(Image.fromarray((ramp * 255).astype(np.uint8)), (x0, y0))
    draw.rectangle((x0, y0, x0 + 17, y0 + bar_h - 1), outline="black")
    font = _font(12)
    for frac, value in ((0.0, m), (0.25, m / 2), (0.5, 0.0), (0.75, -m / 2), (1.0, -m)):
        y = y0 + int(frac * (bar_h - 1))
        draw.line((x0 + 18, y, x0 + 22, y), fill="black")
        draw.text((x0 + 25, y - 7), _fmt(value), fill="black", font=font)
    draw.text((x0, min(y0 + bar_h + 2, canvas.height - 14)), unit, fill="black", font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def image_png(image: np.ndarray) -> bytes:
    """``image`` (H, W, 3) uint8 as PNG bytes (the input exactly as the model saw it)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


#: overlay colour scales: one symmetric range for all targets of a job (the viewer's), or
#: each target's own
SCALES = ("shared", "own")


def content_box_of(document: dict, fit: str | None = None) -> tuple[int, int, int, int]:
    """Where the photo's part lands in the model input (input pixels), placed from the
    document's photo and input sizes and ``fit`` (else the document's, else the default)."""
    image = document["image"]
    fit = fit or document["params"].get("fit") or DEFAULT_FIT
    return placement((image["width"], image["height"]), tuple(document["model"]["input_size"]),
                     fit).content_box


def render_overlay(document: dict, relevance: np.ndarray, counts: np.ndarray, index: int, *,
                   photo: Image.Image | None = None, input_image: np.ndarray | None = None,
                   scale: str = "shared", view: str = "photo",
                   content_box: tuple[int, int, int, int] | None = None,
                   side: int | None = None) -> bytes:
    """The overlay PNG of explanation ``index`` of a result document.

    ``view="photo"`` draws on the whole uploaded photo (its display copy), marking what was
    not explained; ``"input"`` on the model input. ``scale="shared"`` (the default, as in
    the viewer) uses one symmetric range for every target of the job, so their colours
    compare; ``"own"`` stretches each target's map to its own maximum. ``content_box``
    (:func:`pda.document.content_box`, the stored placement) saves placing the photo
    again; without it, it is placed from the document (:func:`content_box_of`). ``side``
    draws the photo (or the input) that many pixels on its longer side; by default the
    photo at its display copy's size, the input at :data:`SCALE` times."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}")
    e = document["explanations"][index]
    title = f"{e['label']} ({e['target']}): red for, blue against"
    unit = "bits" if e["unit"] == "bits" else "activation"
    if scale == "shared":
        m = max((x["max_abs"] for x in document["explanations"]), default=0.0)
    else:
        m = e["max_abs"]
    m = m if m > 0 else 1.0
    if view == "photo" and photo is not None:
        size = None if side is None else fit_side(document["image"]["width"],
                                                  document["image"]["height"], side)
        if size is not None and size != photo.size:
            photo = photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        box = content_box or content_box_of(document)
        return photo_overlay_png(relevance[index], counts, photo,
                                 {**document["image"], "content_box": list(box)},
                                 title=title, unit=unit, vmax=m)
    if input_image is None:
        raise ValueError("the input view needs the input image")
    return overlay_png(relevance[index], input_image, title=title, unit=unit, vmax=m,
                       side=side)
