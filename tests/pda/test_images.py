"""Image loading and preprocessing: geometry by hand, and every bad input refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pda.engine.inputs import preprocess, to_uint8
from pda.errors import ImageTooLargeError, InvalidImageError
from pda.images import crop_box_for, open_image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def bands_300x200() -> Image.Image:
    """Red | green | blue columns: only the green middle survives a centre crop."""
    a = np.zeros((200, 300, 3), np.uint8)
    a[:, :50] = (255, 0, 0)
    a[:, 50:250] = (0, 255, 0)
    a[:, 250:] = (0, 0, 255)
    return Image.fromarray(a)


# --- preprocess geometry ----------------------------------------------------------------


def test_landscape_image_is_scaled_to_height_and_cropped_at_the_centre() -> None:
    # 300x200 -> scale 224/200 = 1.12 -> 336x224, crop 56 px each side = 50 original px
    x, box = preprocess(bands_300x200(), (224, 224), fit="crop")
    assert box == (50, 0, 250, 200)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # the kept region is the green band; only the outermost column sees a little of its
    # neighbours through the resampling filter
    assert torch.all(x[1] > 0.95) and torch.all(x[0] < 0.05) and torch.all(x[2] < 0.05)
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 224, 220)
    assert torch.equal(x[:, :, 2:-2], green)


def test_portrait_image_is_cropped_top_and_bottom() -> None:
    x, box = preprocess(bands_300x200().rotate(90, expand=True), (224, 224), fit="crop")  # 200x300
    assert box == (0, 50, 200, 250)
    assert x.shape == (3, 224, 224)


def test_non_square_input_size_covers_height_by_width() -> None:
    # (H, W) = (224, 112): aspect 1:2, so a 300x200 image keeps a 100x200 centre strip
    x, box = preprocess(bands_300x200(), (224, 112), fit="crop")
    assert box == (100, 0, 200, 200)
    assert x.shape == (3, 224, 112)
    assert crop_box_for((300, 200), (100, 300)) == (0, 50, 300, 150)  # wide target: crop rows


def test_image_already_at_input_size_is_used_bit_for_bit() -> None:
    img = noise(224, 224)
    x, box = preprocess(img, (224, 224), fit="crop")
    assert box == (0, 0, 224, 224)
    expected = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
    assert torch.equal(x, expected)
    assert np.array_equal(to_uint8(x), np.asarray(img))


def test_small_image_is_upscaled() -> None:
    x, box = preprocess(noise(30, 20), (224, 224), fit="crop")
    assert box == (5, 0, 25, 20)
    assert x.shape == (3, 224, 224) and 0.0 <= x.min() and x.max() <= 1.0


# --- decoding -----------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # stored 40x20: red left, blue right; orientation 6 = display rotated 90 deg clockwise
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(a).save(path, format="JPEG", quality=95, exif=exif)
    img = open_image(path)
    assert img.size == (20, 40)
    r, g, b = img.getpixel((10, 5))  # top: the stored left half
    assert r > 200 and b < 60
    r, g, b = img.getpixel((10, 35))  # bottom: the stored right half
    assert b > 200 and r < 60


def test_the_example_photo_opens_as_rgb() -> None:
    img = open_image(EXAMPLES / "chelsea.png")
    assert img.mode == "RGB" and img.size == (451, 300)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_open(fmt: str) -> None:
    img = open_image(encode(noise(8, 6), fmt))
    assert img.mode == "RGB" and img.size == (8, 6)


def test_camera_jpeg_with_extra_mpf_frames_opens_as_its_first_frame() -> None:
    photo, preview = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    img = open_image(encode(photo, "MPO", save_all=True, append_images=[preview]))
    r, g, b = img.getpixel((4, 4))
    assert img.size == (8, 8) and r > 240 and b < 20


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue
    img = open_image(encode(rgba, "PNG"))
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((1, 0)) == (255, 255, 255)


def test_greyscale_palette_and_cmyk_become_rgb() -> None:
    assert open_image(encode(Image.new("L", (3, 3), 77), "PNG")).getpixel((1, 1)) == (77, 77, 77)
    pal = Image.new("RGB", (3, 3), (10, 200, 30)).quantize(4)
    assert open_image(encode(pal, "PNG")).getpixel((0, 0)) == (10, 200, 30)
    cmyk = open_image(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    r, g, b = cmyk.getpixel((2, 2))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_sixteen_bit_greyscale_is_rescaled_not_clipped() -> None:
    a = np.array([[0, 32896, 65535]], dtype=np.uint16)
    img = open_image(encode(Image.fromarray(a), "PNG"))
    assert [img.getpixel((i, 0)) for i in range(3)] == [(0, 0, 0), (128, 128, 128), (255,) * 3]


# --- refused inputs -------------------------------------------------------------------


def png_with_size(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring a huge size (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


BAD_INPUTS = {
    "zero bytes": (b"", "empty"),
    "truncated PNG": (encode(noise(64, 64), "PNG")[:3000], "corrupt or truncated"),
    "truncated JPEG": (encode(noise(64, 64), "JPEG", quality=95)[:2000], "corrupt or truncated"),
    "text named .png": (b"hello, this is not a picture\n" * 4, "not a recognised image"),
    "SVG": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10"/></svg>',
        "not a recognised image",
    ),
    "animated GIF": (animated_gif(), "2 frames"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_images_raise_invalid_image_with_a_one_line_reason(name: str, tmp_path: Path) -> None:
    data, reason = BAD_INPUTS[name]
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(InvalidImageError) as info:
            open_image(source)
        assert not isinstance(info.value, ImageTooLargeError)
        assert reason in str(info.value) and "\n" not in str(info.value)
        assert info.value.field == "image"


def test_missing_file_raises_invalid_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="no such image file"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(InvalidImageError, match="not a regular file"):
        open_image(tmp_path)


def test_huge_header_is_refused_before_decoding() -> None:
    # 50 MP: over our 40 MP default, under PIL's own guard, so our check is what refuses it
    with pytest.raises(ImageTooLargeError, match=r"10000x5000 = 50000000 pixels; the limit"):
        open_image(png_with_size(10_000, 5_000))
    # far beyond PIL's own guard too, which trips first inside Image.open
    for side in (100_000, 2**31 - 1):
        with pytest.raises(ImageTooLargeError, match="the limit is 40000000 pixels"):
            open_image(png_with_size(side, side))


def test_pixel_cap_is_configurable() -> None:
    data = encode(noise(100, 100), "PNG")
    with pytest.raises(ImageTooLargeError, match="limit is 5000 pixels"):
        open_image(data, max_pixels=5000)
    assert open_image(data, max_pixels=10_000).size == (100, 100)
