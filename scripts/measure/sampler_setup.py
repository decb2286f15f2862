"""Sampler set-up by window: time and peak memory of building the conditional sampler
(docs/performance.md, "Sampler set-up by window").

Each window runs in a fresh process (so "cold" means an empty factor cache and peak RSS
is that window's alone): it loads the built-in statistics (and their autocovariance,
once per file), builds the sampler for a 224 x 224 photo at padding 2 and the given
stride (stride 1 has the most border geometries), builds it again (warm, memory: the
process cache), and draws one block of 64 windows x 2 samples. A second fresh process
then builds it from the disk cache the first wrote (warm, disk). Beside each measure, in
parentheses, what pda.costs predicts. Prints one Markdown row per window.

    python scripts/measure/sampler_setup.py [--windows 10 32 48 ...] [--stride 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's pda, not an installed one

WINDOWS = (10, 32, 48, 56, 64, 96, 128, 150, 200)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """The process's largest RSS while running, polled every 0.5 ms (ru_maxrss only rises
    above the start's own earlier peak, loading the statistics, so it misses smaller ones)."""

    def __init__(self) -> None:
        self.peak, self.running = rss_mb(), True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.0005)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return max(self.peak, rss_mb())


def one(window: int, padding: int, stride: int, sampler: str, disk: str | None) -> dict:
    import torch

    from pda.engine import cache
    from pda.engine.geometry import window_positions
    from pda.engine.inputs import preprocess
    from pda.engine.samplers import make_sampler
    from pda.engine.stats import get_stats
    from pda.images import open_image

    torch.set_num_threads(2)
    cache.configure(cache.DEFAULT_MAX_BYTES, disk, cache.DEFAULT_DISK_BYTES)
    stats = get_stats()
    stats.autocovariance() if sampler == "conditional" else None  # per file, not per window
    x, _ = preprocess(open_image(ROOT / "examples/chelsea.png"), (224, 224), "crop")
    pos = window_positions(224, 224, window, stride)
    before = rss_mb()
    watch = PeakRSS()
    t0, c0 = time.perf_counter(), time.process_time()
    smp = make_sampler(sampler, x, window, pos, stats, padding=padding)
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    make_sampler(sampler, x, window, pos, stats, padding=padding)
    warm = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    ids = torch.arange(min(64, len(pos)))
    t0 = time.perf_counter()
    smp.sample(ids, 2, gen)
    per_draw = (time.perf_counter() - t0) / (2 * len(ids))
    smp.sample(torch.flip(ids, [0]), 2, gen)  # the sweep's next block: the peak holds
    peak = watch.stop()
    return {"window": window, "padding": padding, "stride": stride, "sampler": sampler,
            "kind": type(smp).__name__, "geometries": getattr(smp, "geometries", 0),
            "cold_s": round(cold, 2), "cold_cpu_s": round(cold_cpu, 2),
            "warm_s": round(warm, 3),
            "ms_per_draw": round(per_draw * 1e3, 2),
            "held_mb": round(rss_mb() - before), "peak_mb": round(peak - before),
            "rss_before_mb": round(before)}


def calibrate() -> dict:
    """The rates pda.costs uses: float64 dense linear algebra (flops/s) and complex FFTs
    (seconds per point x log2 points), each the median of 5 runs."""
    import numpy as np
    import torch

    torch.set_num_threads(2)
    n = 1200
    a = np.random.default_rng(0).standard_normal((3, n, n))
    spd = torch.from_numpy(a @ a.transpose(0, 2, 1) + n * np.eye(n))
    rhs = np.random.default_rng(1).standard_normal((n, 800))

    def timed(fn) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return sorted(runs)[2]

    t_chol = timed(lambda: torch.cholesky_inverse(torch.linalg.cholesky(spd)))  # 3 n^3
    t_solve = timed(lambda: np.linalg.solve(a[0] @ a[0].T + n * np.eye(n), rhs))
    flops = (3 * n ** 3 / t_chol + (2 * n ** 3 + 2 / 3 * n ** 3 + 2 * n * n * 800) / t_solve) / 2
    x = torch.randn((16, 3, 432, 432), dtype=torch.complex64)
    t_fft = timed(lambda: torch.fft.fft2(x))
    pts = 16 * 3 * 432 * 432
    return {"linalg_flops": flops, "fft_seconds": t_fft / (pts * np.log2(432 * 432))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS))
    ap.add_argument("--padding", type=int, default=2)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--sampler", default="conditional")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per window; times are the fastest run's")
    ap.add_argument("--calibrate", action="store_true",
                    help="print the rates pda.costs uses, measured on this machine, first")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--disk", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.calibrate:
        rates = calibrate()
        print(f"LINALG_FLOPS = {rates['linalg_flops']:.3g}  FFT_SECONDS = "
              f"{rates['fft_seconds']:.3g}", flush=True)
    if a.one:
        print(json.dumps(one(a.windows[0], a.padding, a.stride, a.sampler, a.disk)))
        return
    from pda.costs import sampler_cost

    print("| window | l | sampler path | geometries | cold s (model) | cold CPU s | "
          "warm, disk s | warm, memory s | ms per draw (model) | peak MB over start "
          "(model) | held MB (model) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for w in a.windows:
        pairs = []
        for _ in range(a.repeat):
            with tempfile.TemporaryDirectory() as disk:
                runs = []
                for _ in range(2):  # the first fills the disk cache, the second reads it
                    out = subprocess.run(
                        [sys.executable, __file__, "--one", "--windows", str(w), "--padding",
                         str(a.padding), "--stride", str(a.stride), "--sampler", a.sampler,
                         "--disk", disk], capture_output=True, text=True)
                    if out.returncode:
                        break
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            if len(runs) == 2:
                pairs.append(runs)
        if not pairs:
            print(f"| {w} | {w + 2 * a.padding} | failed: "
                  f"{out.stderr.strip().splitlines()[-1][:120]} |", flush=True)
            continue
        # times: the least disturbed of the repeats (the machine is shared); memory: the first
        r, d = dict(pairs[0][0]), dict(pairs[0][1])
        for key in ("cold_s", "cold_cpu_s", "warm_s", "ms_per_draw"):
            r[key] = min(p[0][key] for p in pairs)
        d["cold_s"] = min(p[1]["cold_s"] for p in pairs)
        c = sampler_cost(a.sampler, w, a.padding, a.stride, 2, (224, 224))
        mb = 2 ** 20
        print(f"| {w} | {w + 2 * a.padding} | {r['kind']} | {r['geometries']} | "
              f"{r['cold_s']} ({c.setup_seconds:.2f}) | {r['cold_cpu_s']} | {d['cold_s']} | "
              f"{r['warm_s']} | "
              f"{r['ms_per_draw']} ({c.draw_seconds * 1e3:.1f}) | {r['peak_mb']} "
              f"({c.peak_bytes / mb:.0f}) | {r['held_mb']} ({c.held_bytes / mb:.0f}) |",
              flush=True)


if __name__ == "__main__":
    main()
