"""Image loading and preprocessing: untrusted bytes in, a model-sized pixel tensor out.

Everything here works in **pixel space**: RGB in [0, 1], after resize/crop and before any
model's normalisation, so the samplers' statistics serve every model (see docs/algorithm.md §3).

Shapes: H x W = the model's input size; arrays are (H, W, 3) uint8. Nothing here imports
torch: the API decodes and checks uploads with this module alone.

Images come from strangers (uploads), so :func:`open_image` is deliberately strict: the
format is identified from the file's own bytes against an allowlist, the pixel count is
checked from the header *before* any pixel is decoded (decompression bombs), truncated
files fail instead of being padded with grey (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays
False), and animated or multi-page files are refused rather than silently reduced to one
frame. Every failure is an :class:`InvalidImageError` with a one-line reason.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from .defaults import FITS
from .errors import (
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidImageError,
    InvalidParameterError,
)

#: Formats we decode. Identification uses only these plugins, so SVG, PDF, PSD, EPS
#: (Ghostscript!) and the long tail of exotic decoders are never reached.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")

#: Images with a shorter side below this are refused for explanation (422): a 1 x 1 upload
#: would be upscaled into a flat colour and explained as a full job.
MIN_IMAGE_SIDE = 32
#: The background of ``fit=pad``: ImageNet's mean colour, neutral for the built-in models.
PAD_COLOUR = (124, 116, 104)

#: Default decompression-bomb cap; the service passes ``Settings.max_image_pixels``
#: (same value by default).
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow's process-wide guards, set here on purpose rather than inherited:
# - its decompression-bomb check runs inside Image.open (a warning above MAX_IMAGE_PIXELS,
#   an error above twice that); it is the backstop behind our own per-call cap, and
#   open_image raises it to follow a larger configured cap;
# - PNG text chunks (zTXt/iTXt are zlib streams, so bombs too) are capped per chunk and
#   per file; nothing here reads them;
# - truncated files fail instead of being padded with grey.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
PngImagePlugin.MAX_TEXT_CHUNK = 1024 * 1024  # big ICC profiles and XMP still fit
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Resampling filter for the resize. PIL's resize is a separable convolution whose support
#: grows with the downscale factor, i.e. it is antialiased, unlike a plain
#: ``F.interpolate``. Bicubic is what TensorFlow's EfficientNet evaluation used and is
#: within noise of torchvision's bilinear for the other built-ins.
RESAMPLE = Image.Resampling.BICUBIC

# What decoders raise on corrupt input. Listed rather than ``Exception`` so that
# MemoryError and programming errors still surface as themselves.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)


def open_image(
    source: str | Path | bytes, *, max_pixels: int | None = None,
    fit_to: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into a fully loaded RGB image.

    EXIF orientation is applied, greyscale/palette/16-bit/CMYK become RGB and
    transparency is composited on white (what a viewer shows). ``max_pixels`` (default
    :data:`DEFAULT_MAX_PIXELS`) caps width x height and raises
    :class:`ImageTooLargeError` before decoding.

    ``fit_to`` (H, W), the model's input size, decodes only what the model needs: a JPEG
    is decoded at a reduced scale (``draft``) and any image at least four times the
    needed size is reduced right after decoding, keeping at least twice the input size
    for the resampling filter. The result then remembers the original (oriented) size in
    ``image.info["original_size"]``, which the crop box is computed from.
    """
    cap = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if cap > (Image.MAX_IMAGE_PIXELS or 0):  # only ever raised, so racing threads agree
        Image.MAX_IMAGE_PIXELS = cap
    img = _open_checked(_read_bytes(source), cap)
    fmt = img.format or "image"
    original = img.size
    if fit_to is not None:
        img.draft("RGB", _needed_size(img.size, fit_to))  # JPEG: DCT scaling; others: no-op
    img = _decode(img, fmt, cap)
    if fit_to is not None and (factor := min(img.size) // (2 * max(fit_to))) >= 2:
        img = _rgb(img, fmt).reduce(factor)  # drops the full-size pixels right away
    oriented = _orient(img)
    if oriented.size != img.size and oriented.size == img.size[::-1]:
        original = original[::-1]  # EXIF rotated by 90 degrees
    rgb = _rgb(oriented, fmt)
    if fit_to is not None:
        rgb.info["original_size"] = original
    return rgb


def original_size(img: Image.Image) -> tuple[int, int]:
    """The size (w, h) of the photo as uploaded (after EXIF orientation), even when
    :func:`open_image` reduced it for the model."""
    return tuple(img.info.get("original_size", img.size))  # type: ignore[return-value]


def check_min_side(size: tuple[int, int], minimum: int = MIN_IMAGE_SIDE) -> None:
    """Refuse images too small to explain (a 1 x 1 image would be upscaled into noise)."""
    if min(size) < minimum:
        raise ImageTooSmallError(
            f"image is {size[0]}x{size[1]} pixels; both sides must be at least {minimum} "
            "pixels", field="image")


def _needed_size(size: tuple[int, int], fit_to: tuple[int, int]) -> tuple[int, int]:
    """The smallest decode size that keeps twice the model's input on the shorter side."""
    w, h = size
    scale = min(1.0, 2 * max(fit_to) / max(1, min(w, h)))
    return max(1, int(w * scale)), max(1, int(h * scale))


def _open_checked(data: bytes, cap: int) -> Image.Image:
    """Identify the format from the bytes, check the declared size and frame count."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)", field="image")
    allowed = ", ".join(ALLOWED_FORMATS)
    try:
        with warnings.catch_warnings():
            # our own cap below is the check that counts; PIL's global one only warns
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as e:  # PIL's own guard (2x MAX_IMAGE_PIXELS)
        raise _bomb(cap) from e
    except Image.UnidentifiedImageError as e:
        raise InvalidImageError(
            f"not a recognised image file (allowed formats: {allowed})", field="image"
        ) from e
    except _DECODE_ERRORS as e:
        raise InvalidImageError(f"cannot read the image header: {e}", field="image") from e
    fmt = img.format or "image"
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidImageError(f"the {fmt} file declares an empty size {w}x{h}", field="image")
    if w * h > cap:
        raise ImageTooLargeError(
            f"image is {w}x{h} = {w * h} pixels; the limit is {cap} pixels", field="image"
        )
    frames = getattr(img, "n_frames", 1)
    # Camera JPEGs with an MPF block (phones: previews, depth maps) open as MPO; their
    # first frame is the photo itself, so they are stills, not animations.
    if frames > 1 and fmt != "MPO":
        raise InvalidImageError(
            f"the {fmt} file has {frames} frames (animated or multi-page); "
            "send a single still image",
            field="image",
        )
    return img


def _decode(img: Image.Image, fmt: str, cap: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as e:
        raise _bomb(cap) from e
    except _DECODE_ERRORS as e:
        raise InvalidImageError(
            f"the {fmt} file is corrupt or truncated: {e}", field="image"
        ) from e
    return img


def _rgb(img: Image.Image, fmt: str) -> Image.Image:
    try:
        return _to_rgb(img)
    except _DECODE_ERRORS as e:
        raise InvalidImageError(
            f"cannot convert the {fmt} image (mode {img.mode}) to RGB: {e}", field="image"
        ) from e


def _orient(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:
        return img  # a broken EXIF block does not make the pixels wrong; keep them as stored


def _bomb(cap: int) -> ImageTooLargeError:
    """Pillow's own guard tripped: the header declares more than twice its limit."""
    over = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return ImageTooLargeError(f"image too large: its header declares over {over} pixels; "
                              f"the limit is {cap} pixels", field="image")


def _read_bytes(source: str | Path | bytes) -> bytes:
    """Bytes of ``source``; reading a path up front closes the file before decoding."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    if not path.exists():
        raise InvalidImageError(f"no such image file: {path}", field="image")
    if not path.is_file():
        raise InvalidImageError(f"not a regular file: {path}", field="image")
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidImageError(f"cannot read {path}: {e.strerror or e}", field="image") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit and float greyscale are rescaled (PIL's own convert clips them)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode.startswith("F"):
        a = np.asarray(img).astype(np.float64)
        if mode.startswith("F"):
            top = 1.0 if a.max(initial=0.0) <= 1.0 else 255.0
        elif mode.startswith("I;16") or a.max(initial=0) > 255:
            top = 65535.0
        else:
            top = 255.0
        a8 = np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a8).convert("RGB")
    return img.convert("RGB")


def crop_box_for(size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred region of an image of ``size`` (w, h) that preprocessing keeps.

    It is the largest centred box with the aspect ratio of ``input_size`` (H, W), i.e.
    what is left after scaling the image to cover H x W and cropping the centre. Integer
    coordinates in original pixels, (left, top, right, bottom).
    """
    w, h = size
    H, W = input_size
    if w * H >= h * W:  # wider than the target: full height, crop the sides
        bw, bh = min(w, max(1, round(h * W / H))), h
    else:  # taller: full width, crop top and bottom
        bw, bh = w, min(h, max(1, round(w * H / W)))
    left, top = (w - bw) // 2, (h - bh) // 2
    return left, top, left + bw, top + bh


@dataclass(frozen=True)
class Placement:
    """Where the photo goes in the model's input, and back.

    ``crop_box`` (left, top, right, bottom) is the part of the photo the model sees, in
    the photo's own pixels; ``content_box`` is where that part lands in the model input
    (input pixels). crop: the centre box fills the input. squash: the whole photo fills
    it, aspect ratio not kept. pad: the whole photo, aspect kept, centred on a neutral
    background (``content_box`` is then smaller than the input)."""

    fit: str
    crop_box: tuple[int, int, int, int]
    content_box: tuple[int, int, int, int]


def placement(size: tuple[int, int], input_size: tuple[int, int], fit: str
              ) -> Placement:
    """The :class:`Placement` of a photo of ``size`` (w, h) in an input of (H, W)."""
    w, h = size
    H, W = input_size
    if fit == "crop":
        return Placement(fit, crop_box_for(size, input_size), (0, 0, W, H))
    if fit == "squash":
        return Placement(fit, (0, 0, w, h), (0, 0, W, H))
    if fit == "pad":
        scale = min(W / w, H / h)
        cw, ch = max(1, min(W, round(w * scale))), max(1, min(H, round(h * scale)))
        left, top = (W - cw) // 2, (H - ch) // 2
        return Placement(fit, (0, 0, w, h), (left, top, left + cw, top + ch))
    raise InvalidParameterError(f"unknown fit {fit!r}; use {', '.join(FITS)}", field="fit")


def fit_array(img: Image.Image, input_size: tuple[int, int], fit: str
              ) -> tuple[np.ndarray, Placement]:
    """The model input as (H, W, 3) uint8, and its :class:`Placement` on the photo.

    The photo's region is resized once (PIL's ``box`` semantics, antialiased), which for
    ``crop`` equals resize-then-crop up to half a pixel and gives an exact integer
    ``crop_box`` in the photo's original pixels, also when :func:`open_image` reduced the
    decoded image. An image already at the input size is used unchanged, bit for bit.
    """
    H, W = input_size
    if H <= 0 or W <= 0:
        raise ValueError(f"input size must be positive, got {input_size}")
    if img.mode != "RGB":
        img = _to_rgb(img)
    size = original_size(img)
    place = placement(size, input_size, fit)
    sx, sy = img.size[0] / size[0], img.size[1] / size[1]  # < 1 when decoded reduced
    left, top, right, bottom = place.crop_box
    box = (left * sx, top * sy, right * sx, bottom * sy)
    cl, ct, cr, cb = place.content_box
    if img.size == (cr - cl, cb - ct) and box == (0, 0, *img.size):
        region = img
    else:
        region = img.resize((cr - cl, cb - ct), RESAMPLE, box=box)
    if (cr - cl, cb - ct) == (W, H):
        return np.asarray(region, dtype=np.uint8).copy(), place  # (H, W, 3)
    canvas = Image.new("RGB", (W, H), PAD_COLOUR)
    canvas.paste(region, (cl, ct))
    return np.asarray(canvas, dtype=np.uint8).copy(), place  # (H, W, 3)
