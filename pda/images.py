"""Image loading and preprocessing: untrusted bytes in, a model-sized pixel tensor out.

Everything here works in **pixel space**: RGB in [0, 1], after resize/crop and before any
model's normalisation, so the samplers' statistics serve every model (see pda.md §3).

Shapes: C = 3 channels, H x W = the model's input size.

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
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from .errors import ImageTooLargeError, InvalidImageError

#: Formats we decode. Identification uses only these plugins, so SVG, PDF, PSD, EPS
#: (Ghostscript!) and the long tail of exotic decoders are never reached.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")

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
    source: str | Path | bytes, *, max_pixels: int | None = None
) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into a fully loaded RGB image.

    EXIF orientation is applied, greyscale/palette/16-bit/CMYK become RGB and
    transparency is composited on white (what a viewer shows). ``max_pixels`` (default
    :data:`DEFAULT_MAX_PIXELS`) caps width x height and raises
    :class:`ImageTooLargeError` before decoding.
    """
    cap = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if cap > (Image.MAX_IMAGE_PIXELS or 0):  # only ever raised, so racing threads agree
        Image.MAX_IMAGE_PIXELS = cap
    data = _read_bytes(source)
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

    try:
        img = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:
        pass  # a broken EXIF block does not make the pixels wrong; keep them as stored
    try:
        return _to_rgb(img)
    except _DECODE_ERRORS as e:
        raise InvalidImageError(
            f"cannot convert the {fmt} image (mode {img.mode}) to RGB: {e}", field="image"
        ) from e


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


def preprocess(
    img: Image.Image, input_size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Shorter side to the input size, centre crop: returns x (3, H, W) in [0, 1], crop_box.

    The crop is taken first in original pixels and then resized once (PIL's ``box``
    semantics), which equals resize-then-crop up to half a pixel and gives an exact
    integer ``crop_box`` for mapping relevance back onto the original. An image already
    at the input size is used unchanged, bit for bit.
    """
    H, W = input_size
    if H <= 0 or W <= 0:
        raise ValueError(f"input size must be positive, got {input_size}")
    if img.mode != "RGB":
        img = _to_rgb(img)
    box = crop_box_for(img.size, (H, W))
    if img.size != (W, H):
        img = img.resize((W, H), RESAMPLE, box=box)
    a = np.asarray(img, dtype=np.uint8)  # (H, W, C)
    x = torch.from_numpy(a.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)  # (C, H, W)
    return x.contiguous(), box


def to_pil(x: torch.Tensor) -> Image.Image:
    """A pixel-space tensor (3, H, W) in [0, 1] as an 8-bit RGB image (e.g. ``input.png``)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(x.shape)}")
    a = x.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round()
    a8 = a.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()  # (H, W, C)
    return Image.fromarray(a8)
