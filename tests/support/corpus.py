"""The bad-input corpus (hostile and broken files, each with the status and words its
problem document must have) and unusual but valid images, for the safety tests and the
keep-alive run against a real server."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w: int = 64, h: int = 48, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(w * h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG declaring any size, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def jpeg_header(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to claim another size."""
    data = bytearray(encode(photo(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees: 64x48 stored, 48x64 displayed
    return encode(photo(64, 48), "JPEG", exif=exif)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


#: name -> (bytes, expected status, words the detail must contain)
CORPUS = {
    "empty.png": (b"", 415, "empty (0 bytes)"),
    "truncated.png": (encode(photo(), "PNG")[:2000], 415, "corrupt or truncated"),
    "truncated.jpg": (encode(photo(), "JPEG", quality=95)[:1500], 415, "corrupt or truncated"),
    # 8000 x 8000 one-bit pixels: 64 MP, about 8 kB on disk
    "bomb.png": (encode(Image.new("1", (8000, 8000)), "PNG"), 413, "64000000 pixels"),
    "huge-header.png": (png_header(100_000, 100_000), 413, "limit is 40000000 pixels"),
    "huge-header.jpg": (jpeg_header(65_000, 65_000), 413, "limit is 40000000 pixels"),
    "notes.png": (b"these are my notes, not a picture\n" * 8, 415, "not a recognised image"),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                    b'<circle r="30" cx="32" cy="32"/></svg>', 415, "not a recognised image"),
    "animated.gif": (animated("GIF"), 415, "3 frames"),
    "pages.tiff": (animated("TIFF"), 415, "3 frames"),
    "animated.webp": (animated("WEBP"), 415, "3 frames"),
}
#: accepted, and the size the job records (after EXIF orientation)
GOOD = {
    "cmyk.jpg": (encode(photo(mode="CMYK"), "JPEG"), (64, 48)),
    "grey16.png": (encode(Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)
                                          * 20), "PNG"), (64, 48)),
    "rgba.png": (encode(photo(mode="RGBA"), "PNG"), (64, 48)),
    "grey.png": (encode(photo(mode="L"), "PNG"), (64, 48)),
    "palette.gif": (encode(photo().quantize(16), "GIF"), (64, 48)),
    "rotated.jpg": (exif_rotated(), (48, 64)),
}
