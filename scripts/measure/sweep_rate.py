"""The sweep's rate against its backend's raw rate, before and after the batch-buffer
change, side by side in one process (docs/performance.md, "The sweep against the raw
rate").

Per sampler, in interleaved rounds on the backend ``auto`` picks (OpenVINO f32 on a CPU
where installed), at the default job's window (32, stride 8, 2 samples, padding 2),
sweeping the first ``--windows`` windows of chelsea:

- ``raw``: the backend's readout on one batch of the unmodified image, images/s;
- ``sweep``: the engine as it is (one batch buffer per sweep, profiler scopes only under
  a profiler), passes/s;
- ``plain``: the engine as it was (a fresh batch with the whole image copied into every
  row, ``record_function`` entered on every batch), passes/s;
- the same two with a null readout (zeros): the engine's own cost per pass, which the
  load of a shared machine disturbs less than the model's.

Ratios are best / best over rounds (outside load only slows a run down). The maps of
``sweep`` and ``plain`` are compared bit for bit.

    python scripts/measure/sweep_rate.py [--rounds 4] [--windows 150] [--samplers ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's pda, not an installed one

import torch  # noqa: E402
from torch.profiler import record_function  # noqa: E402

import pda.engine.sweep as sweep_mod  # noqa: E402
from pda.defaults import DEFAULT_PADDING, DEFAULT_SAMPLES, DEFAULT_STRIDE, DEFAULT_WINDOW  # noqa: E402
from pda.engine.backends import build_readout, resolve_backend, torch_threads  # noqa: E402
from pda.engine.device import resolve_device  # noqa: E402
from pda.engine.geometry import window_positions  # noqa: E402
from pda.engine.inputs import model_input  # noqa: E402
from pda.engine.samplers import make_sampler  # noqa: E402
from pda.engine.stats import get_stats  # noqa: E402
from pda.engine.sweep import Forward, run_sweep  # noqa: E402
from pda.models.registry import get_model  # noqa: E402
from pda.tools.bench import SAMPLE_IMAGE, _machine  # noqa: E402

K, STRIDE, S, PAD, BATCH = (DEFAULT_WINDOW, DEFAULT_STRIDE, DEFAULT_SAMPLES, DEFAULT_PADDING,
                            4)
NEW_BATCH = sweep_mod._perturbed_batch
NEW_SCOPE = sweep_mod._scope


@contextlib.contextmanager
def plain_engine():
    """The engine before the change: no buffer reuse, record_function on every batch."""
    sweep_mod._perturbed_batch = lambda *a, reuse=None, **kw: NEW_BATCH(*a, **kw)
    sweep_mod._scope = record_function
    try:
        yield
    finally:
        sweep_mod._perturbed_batch, sweep_mod._scope = NEW_BATCH, NEW_SCOPE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--windows", type=int, default=150)
    ap.add_argument("--raw-seconds", type=float, default=3.0)
    ap.add_argument("--samplers", default="marginal,conditional,constant")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = get_model("efficientnet_lite0", resolve_device("cpu"))
    dev = model.device
    backend = resolve_backend("auto", dev)
    x = model_input(SAMPLE_IMAGE, model.input_size, "crop").x.to(dev)
    C, H, W = x.shape
    readout = build_readout(model, "output", [281, 282, 285], backend=backend,
                            precision="fp32", batch_size=BATCH)
    zeros = torch.zeros(BATCH, 3)

    def null(b: torch.Tensor) -> torch.Tensor:  # a readout that costs nothing
        return zeros[: len(b)]

    ids = torch.arange(args.windows)
    xb = x[None].expand(BATCH, C, H, W).contiguous(
        memory_format=torch.channels_last if readout.channels_last else torch.contiguous_format)
    doc: dict[str, Any] = {
        "command": "python scripts/measure/sweep_rate.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(dev), "backend": backend, "precision": "fp32", "batch": BATCH,
        "window": K, "stride": STRIDE, "samples": S, "windows": args.windows,
        "load_before": os.getloadavg(), "samplers": {}}

    def raw() -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.raw_seconds:
            readout(xb)
            n += BATCH
        return n / (time.perf_counter() - t0)

    with torch_threads(readout.torch_threads):
        for name in args.samplers.split(","):
            smp = make_sampler(name, x, K, window_positions(H, W, K, STRIDE, device=dev),
                               get_stats(), padding=PAD)
            keep: dict[str, Any] = {}

            def sweep(key: str, fn: Any, plain: bool, smp: Any = smp, keep: dict = keep
                      ) -> float:
                fw = Forward(fn, batch_size=BATCH, fixed_batch=readout.fixed_batch,
                             channels_last=readout.channels_last)
                with plain_engine() if plain else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    sw = run_sweep(fw, x, smp, window=K, stride=STRIDE, samples=S,
                                   window_ids=ids)
                    rate = (sw.forward_passes + 1) / (time.perf_counter() - t0)
                keep[key] = sw
                return rate

            fns = {"raw": raw,
                   "sweep": lambda: sweep("sweep", readout, False),
                   "plain": lambda: sweep("plain", readout, True),
                   "null_sweep": lambda: sweep("null_sweep", null, False),
                   "null_plain": lambda: sweep("null_plain", null, True)}
            fns["sweep"]()  # warm-up: the sampler's set-up, first batches
            rounds: dict[str, list[float]] = {k: [] for k in fns}
            for r in range(args.rounds):
                for key, fn in fns.items():
                    rounds[key].append(fn())
                print(f"{name} round {r + 1}: " + ", ".join(
                    f"{k} {v[-1]:.1f}" for k, v in rounds.items()), flush=True)
            best = {k: max(v) for k, v in rounds.items()}
            same = torch.equal(keep["sweep"].window_means, keep["plain"].window_means)
            doc["samplers"][name] = {
                "rounds": rounds, "best": best,
                "sweep_over_raw": best["sweep"] / best["raw"],
                "plain_over_raw": best["plain"] / best["raw"],
                "sweep_over_plain": best["sweep"] / best["plain"],
                "engine_ms_per_pass": 1e3 / best["null_sweep"],
                "plain_engine_ms_per_pass": 1e3 / best["null_plain"],
                "bit_identical": same}
    doc["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    print(f"{doc['machine']}, {backend} fp32, batch {BATCH}, k={K} stride {STRIDE} S={S}, "
          f"{args.windows} windows, best of {args.rounds} rounds, load "
          f"{doc['load_before'][0]:.1f} -> {doc['load_after'][0]:.1f}")
    print("  sampler      raw img/s  sweep  plain  sweep/raw  plain/raw  engine ms/pass "
          "(plain)  bit-identical")
    for name, s in doc["samplers"].items():
        b = s["best"]
        print(f"  {name:<12} {b['raw']:>9.1f} {b['sweep']:>6.1f} {b['plain']:>6.1f} "
              f"{s['sweep_over_raw']:>10.2f} {s['plain_over_raw']:>10.2f} "
              f"{s['engine_ms_per_pass']:>9.2f} ({s['plain_engine_ms_per_pass']:.2f})"
              f"  {s['bit_identical']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
