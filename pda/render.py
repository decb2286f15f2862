"""Overlays: relevance over a greyscale copy of the input, with a colour bar.

Red = evidence for, blue = against, white = 0, on a symmetric scale [-m, m] with
m = max |relevance| (matplotlib's "seismic" map, as the authors use; pda.md section 6).
Written with Pillow alone so the worker needs no plotting library.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def overlay_png(
    relevance: np.ndarray, image: np.ndarray, *, title: str, unit: str,
    vmax: float | None = None,
) -> bytes:
    """The overlay for one target as PNG bytes: title, map, colour bar in ``unit``."""
    H, W = relevance.shape
    m = symmetric_scale(relevance) if vmax is None else vmax
    heat = Image.fromarray(heat_rgb(relevance, image, m)).resize(
        (W * SCALE, H * SCALE), Image.NEAREST
    )
    canvas = Image.new("RGB", (W * SCALE + BAR_WIDTH, H * SCALE + TITLE_HEIGHT), "white")
    canvas.paste(heat, (0, TITLE_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 6), title, fill="black", font=_font(15))

    # colour bar: top = +m (evidence for), bottom = -m (against)
    bar_h = H * SCALE - 36
    x0, y0 = W * SCALE + 10, TITLE_HEIGHT + 10
    ramp = seismic(np.linspace(1, 0, bar_h))[:, None, :].repeat(18, axis=1)
    canvas.paste(Image.fromarray((ramp * 255).astype(np.uint8)), (x0, y0))
    draw.rectangle((x0, y0, x0 + 17, y0 + bar_h - 1), outline="black")
    font = _font(12)
    for frac, value in ((0.0, m), (0.25, m / 2), (0.5, 0.0), (0.75, -m / 2), (1.0, -m)):
        y = y0 + int(frac * (bar_h - 1))
        draw.line((x0 + 18, y, x0 + 22, y), fill="black")
        draw.text((x0 + 25, y - 7), _fmt(value), fill="black", font=font)
    draw.text((x0, y0 + bar_h + 2), unit, fill="black", font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def image_png(image: np.ndarray) -> bytes:
    """``image`` (H, W, 3) uint8 as PNG bytes (the input exactly as the model saw it)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def to_uint8(x) -> np.ndarray:
    """Pixel-space tensor (3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return (np.clip(arr.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
