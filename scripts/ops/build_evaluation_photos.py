"""Rebuild pda/data/evaluation from the package files it was made of (see its README.md).

    pip download --no-deps scikit-image==0.26.0 scikit-learn==1.9.1 scipy==1.9.3 -d W
    apt-get download tuxpaint-stamps-default          # 2022.06.04-1, into W
    python scripts/ops/build_evaluation_photos.py W

Photos: the longer side to 256 px (Lanczos), JPEG quality 90. Tux Paint stamps are photo
cut-outs with an alpha channel: composited over a white square (a product-photo background)
with a 6 % margin, so that squashing to the model's square input does not distort them.
"""

from __future__ import annotations

import bz2
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "pda" / "data" / "evaluation"
SIDE = 256
WHEELS = {  # out name -> (wheel glob, member)
    "cat_chelsea": ("scikit_image-0.26.0-*.whl", "skimage/data/chelsea.png"),
    "coins": ("scikit_image-0.26.0-*.whl", "skimage/data/coins.png"),
    "temple_china": ("scikit_learn-*.whl", "sklearn/datasets/images/china.jpg"),
    "flower": ("scikit_learn-*.whl", "sklearn/datasets/images/flower.jpg"),
    "raccoon": ("scipy-1.9.3-*.whl", "scipy/misc/face.dat"),
}
STAMPS = {  # out name -> path under usr/share/tuxpaint/stamps
    "tiger": "animals/mammals/cats/tiger_sumatran.png",
    "lion": "animals/mammals/cats/lion-2.png",
    "otter": "animals/mammals/aquatic/otter.png",
    "brown_bear": "animals/mammals/bears/european-bear.png",
    "pelican": "animals/birds/pelican.png",
    "crowned_crane": "animals/birds/crowned_crane.png",
    "peahen": "animals/birds/albino_peahen.png",
    "heron": "animals/birds/heron_greatblue_flying.png",
    "lobster": "animals/fish/lobster.png",
    "mantis": "animals/insects/mantis.png",
    "orange": "food/fruit/orange_seville.png",
    "strawberry": "food/fruit/Strawberry2.png",
    "lightbulb": "household/Lightbulb.png",
    "spade": "household/tools/spade.png",
    "airliner": "vehicles/flight/planes/747.png",
    "fire_truck": "vehicles/emergency/firetruck.png",
    "garbage_truck": "vehicles/garbagetruck.png",
    "bus": "vehicles/masstransit/green_korean_bus.png",
    "balloon": "vehicles/flight/balloon360.png",
    "tractor": "vehicles/wheel_tractor.png",
    "cymbal": "hobbies/music/percussion/cymbal_crash.png",
    "candle": "seasonal/candle.png",
    "jack_o_lantern": "seasonal/halloween/jackolantern_mean.png",
    "daffodil": "plants/flowers/daffodil.png",
    "capybara": "animals/mammals/rodents/capybara.png",
}


def small(img: Image.Image) -> Image.Image:
    scale = SIDE / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.LANCZOS)
    return img


def on_white(img: Image.Image) -> Image.Image:
    img = img.convert("RGBA")
    box = img.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    img = img.crop(box)
    side = round(1.12 * max(img.size))  # square, so the model's squash does not distort
    canvas = Image.new("RGBA", (side, side), "white")
    canvas.alpha_composite(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas.convert("RGB")


def main(folder: str) -> None:
    w = Path(folder)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (pattern, member) in WHEELS.items():
        data = zipfile.ZipFile(next(w.glob(pattern))).read(member)
        if member.endswith(".dat"):  # scipy.misc.face: bz2 of raw RGB bytes
            raw = bz2.decompress(data)
            img = Image.fromarray(np.frombuffer(raw, np.uint8).reshape(768, 1024, 3))
        else:
            img = Image.open(BytesIO(data))
        small(img.convert("RGB")).save(OUT / f"{name}.jpg", quality=90)
    deb = next(w.glob("tuxpaint-stamps-default_*.deb"))
    root = w / "tuxpaint"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    stamps = root / "usr/share/tuxpaint/stamps"
    for name, rel in STAMPS.items():
        small(on_white(Image.open(stamps / rel))).save(OUT / f"{name}.jpg", quality=90)


if __name__ == "__main__":
    main(sys.argv[1])
