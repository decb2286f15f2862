"""Time the paper's job (window 10, stride 1, padding 2, 10 samples, conditional sampler,
top-3 classes) for one model: the whole grid, or its first ``--fraction`` of windows and
the whole job extrapolated from their rate (labelled as such).

Used by scripts/ops/gpu-check.sh; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pda.defaults import PAPER
from pda.engine.device import auto_batch_size, resolve_device
from pda.engine.explain import Run
from pda.engine.inputs import model_input
from pda.engine.stats import get_stats
from pda.grid import count_windows
from pda.models.registry import get_model
from pda.params import ExplainParams
from pda.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="fp32", help="one or more: fp32,bf16")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="sweep this leading fraction of the windows and extrapolate")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    model = get_model(args.model, dev, random_weights=args.random_weights)
    x = model_input(ROOT / "examples/chelsea.png", model.input_size, "crop").x
    params = ExplainParams(**PAPER)
    bs = args.batch_size or auto_batch_size(dev, model.input_size, model)
    for precision in args.precision.split(","):  # one model load for every precision
        print(json.dumps(time_job(model, x, params, dev, bs, precision, args)), flush=True)


def time_job(model, x, params, dev, bs, precision, args) -> dict:
    """Build the readout (conversion or compilation included), warm up, time the sweep."""
    t0 = time.perf_counter()
    run = Run(model, x, params, get_stats(),
              Runtime(batch_size=bs, precision=precision, backend=args.backend))
    build = time.perf_counter() - t0
    n_w = count_windows(*model.input_size, params.window, params.stride)
    n = max(1, round(n_w * args.fraction))
    windows = None if n >= n_w else (0, n)
    run.sweep((0, min(n, 64)))  # warm-up: allocator, autotuning
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t1 = time.perf_counter()
    sw = run.sweep(windows)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t1
    rate = sw.forward_passes / seconds
    total = n_w * params.samples + 1
    return {
        "model": model.name, "weights": "random" if args.random_weights else "real",
        "device": str(dev), "machine": torch.cuda.get_device_name(dev) if dev.type == "cuda"
        else "cpu", "runtime": run.setup.runtime, "batch_size": bs,
        "windows_swept": n, "windows": n_w, "passes_swept": sw.forward_passes,
        "seconds_swept": round(seconds, 2), "passes_per_s": round(rate, 1),
        "paper_job_seconds": round(total / rate, 1) if windows is not None else round(seconds, 1),
        "extrapolated": windows is not None, "build_seconds": round(build, 1)}


if __name__ == "__main__":
    main()
