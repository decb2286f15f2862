"""Many images from the command line: one ``pda explain`` of N photos (the model loaded
once) against a loop of N single ``pda explain`` calls (docs/performance.md, "Many images
from the command line").

Both ways run the default preset on the same photos of ``pda/data/evaluation`` with
``--quiet``, in fresh output folders; the rounds alternate which goes first, so the two
share the machine's load. Per way: wall seconds, images per hour, and the sweep's own
seconds (the documents' ``stats.seconds``, summed); the difference of the walls divided
by N is the per-image overhead the one process saves (start-up, torch import, model load,
backend conversion read). Prints the machine, the load and a Markdown row per round.

    python scripts/measure/batch_throughput.py [--images 6] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "pda" / "data" / "evaluation"


def pda(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's pda
    proc = subprocess.run([sys.executable, "-m", "pda.cli", "explain", *args, "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pda explain {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def sweep_seconds(folder: Path) -> float:
    return sum(json.loads(p.read_text())["stats"]["seconds"]
               for p in folder.rglob("result.json"))


def loop(images: list[Path], out: Path) -> float:
    start = time.perf_counter()
    for k, image in enumerate(images):
        pda(str(image), "--out", str(out / f"{k:04d}"))
    return time.perf_counter() - start


def batch(images: list[Path], out: Path) -> float:
    start = time.perf_counter()
    pda(*map(str, images), "--out", str(out))
    return time.perf_counter() - start


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                  if ln.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} CPUs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    images = sorted(p for p in PHOTOS.iterdir() if p.suffix == ".jpg")[:args.images]
    n = len(images)
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
          f"load average at start {os.getloadavg()}")
    print(f"photos: {', '.join(p.name for p in images)}")
    pda(str(images[0]), "--out", tempfile.mkdtemp())  # warm: the converted-graph cache
    print("| round | way | wall s | images/hour | sweep s (sum) | wall - sweep per image |")
    print("|---|---|---|---|---|---|")
    for r in range(args.rounds):
        ways = [("batch", batch), ("loop", loop)]
        if r % 2:
            ways.reverse()
        walls = {}
        for name, run in ways:
            with tempfile.TemporaryDirectory() as tmp:
                wall = run(images, Path(tmp))
                sweep = sweep_seconds(Path(tmp))
            walls[name] = wall
            print(f"| {r + 1} | {name} | {wall:.1f} | {3600 * n / wall:.0f} | {sweep:.1f} | "
                  f"{(wall - sweep) / n:.2f} |", flush=True)
        print(f"| {r + 1} | saved per image | {(walls['loop'] - walls['batch']) / n:.2f} s "
              f"| loop/batch {walls['loop'] / walls['batch']:.2f} | | |", flush=True)
    print(f"load average at end {os.getloadavg()}; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
