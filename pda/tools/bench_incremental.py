"""``python -m pda.tools.bench_incremental``: exact incremental inference against the naive sweep.

Per model, on one machine and in one run: the theoretical saving (conv and linear
multiply-accumulates of a full pass over those of one incremental pass, for a k x k
window in the middle), and measured passes/s of the naive sweep's forward batches
(torch eager; OpenVINO f32 when installed) beside incremental batches (torch eager), on
the same random windows and batch size. Rounds are interleaved and each side reports
its best round (timeit's rule: outside load only slows a run down). Peak memory is the
growth of the resident set's high-water mark (VmHWM, reset after loading the model) in
a fresh subprocess per model and mode, to the end of three batches.

``--write`` stores the decisions (is incremental faster, per model, device and the naive
backend it was compared with) in ``pda/data/incremental.json``: ``incremental=auto``
reads them (:mod:`pda.engine.incremental.decisions`).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from pda.engine.incremental import graph_for, window_readout
from pda.engine.incremental.decisions import DECISIONS_FILE
from pda.engine.sweep import _perturbed_batch

MODELS = ("vgg16", "alexnet", "resnet50", "googlenet", "efficientnet_lite0")
MODES = ("naive", "incremental", "openvino")
SIDE = 224
TARGETS = torch.tensor([0, 1, 2])  # three classes, as the service default (top3)
#: incremental counts as faster from this measured ratio on: a tie within the shared
#: machine's noise keeps the plain path
WIN_MARGIN = 1.1

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def flop_saving(model: Any, x: torch.Tensor, k: int) -> dict[str, float]:
    """Conv + linear MACs of one full pass and of one incremental pass (middle window)."""
    graph = graph_for(model, x)
    pos = torch.tensor([[(SIDE - k) // 2, (SIDE - k) // 2]])
    graph(pos, torch.rand(1, 3, k, k))
    incremental = graph.macs
    graph.dense_above = -1.0  # every patch straight to full maps: the naive pass
    graph(pos, torch.rand(1, 3, k, k))
    return {"gmacs_naive": graph.macs / 1e9, "gmacs_incremental": incremental / 1e9,
            "saving": graph.macs / incremental}


def _openvino(model: Any, batch: int) -> Forward | None:
    """Naive forward through OpenVINO f32 on the CPU, or None when it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    example = torch.rand(batch, 3, SIDE, SIDE)
    core = ov.Core()
    net = core.compile_model(ov.convert_model(model.module, example_input=example), "CPU",
                             {"INFERENCE_PRECISION_HINT": "f32"})

    def forward(batch_x: torch.Tensor, _pos: torch.Tensor) -> torch.Tensor:
        logits = torch.from_numpy(net(model.normalise(batch_x).numpy())[0])  # (B, K)
        return torch.softmax(logits, 1)[:, TARGETS]

    return forward


def forwards(model: Any, x: torch.Tensor, modes: tuple[str, ...], batch: int
             ) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """mode -> (positions (B, 2), patches (B, 3, k, k)) -> readout (B, T)."""
    out: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
    fmt = torch.channels_last  # the sweep's layout on CPU and GPU (prefers_channels_last)
    for mode in modes:
        if mode == "incremental":
            out[mode] = window_readout(model, x, "output", TARGETS)
        elif mode == "naive":
            def naive(pos: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
                b = _perturbed_batch(x, pos, patches, len(pos), fmt)  # (B, 3, H, W)
                return torch.softmax(model(b).float(), 1)[:, TARGETS]
            out[mode] = naive
        elif (ov := _openvino(model, batch)) is not None:
            out[mode] = lambda pos, patches, ov=ov: ov(
                _perturbed_batch(x, pos, patches, len(pos), fmt), pos)
    return out


def _windows(batch: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, SIDE - k + 1, (batch, 2), generator=g)  # (B, 2)
    return pos, torch.rand(batch, 3, k, k, generator=g)  # (B, 3, k, k)


def measure_speed(fns: dict[str, Forward], batch: int, k: int, rounds: int, batches: int
                  ) -> dict[str, float]:
    """Best passes/s of each mode over interleaved rounds of ``batches`` batches."""
    work = [_windows(batch, k, s) for s in range(batches)]
    for fn in fns.values():
        fn(*work[0])  # warm-up: kernel choice, allocator, OpenVINO's first inference
    best = dict.fromkeys(fns, 0.0)
    with torch.inference_mode():
        for _ in range(rounds):
            for mode, fn in fns.items():
                t0 = time.perf_counter()
                for pos, patches in work:
                    fn(pos, patches)
                best[mode] = max(best[mode], batch * batches / (time.perf_counter() - t0))
    return best


def _status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in KiB."""
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(field + ":"))
    return int(line.split()[1])


def probe_memory(name: str, mode: str, batch: int, k: int) -> float:
    """Peak resident growth (MB) of ``mode`` in this process: from the loaded model to
    the end of 3 batches. Loading a model peaks higher than a sweep's batches, so the
    kernel's high-water mark is reset first (``5 > /proc/self/clear_refs``, Linux)."""
    from pda.models.registry import load_model

    model = load_model(name, random_weights=True)
    x = torch.rand(3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fns = forwards(model, x, (mode,), batch)  # incremental: its cache counts too
    with torch.inference_mode():
        for s in range(3):
            fns[mode](*_windows(batch, k, s))
    return (_status_kib("VmHWM") - before) / 1024


def _memory(name: str, mode: str, batch: int, k: int) -> float | None:
    cmd = [sys.executable, "-m", "pda.tools.bench_incremental", "--probe", name, "--mode", mode,
           "--batch", str(batch), "--window", str(k)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return json.loads(done.stdout.splitlines()[-1])["peak_mb"] if done.returncode == 0 \
        else None


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from pda.models.registry import load_model

    model = load_model(name, random_weights=True)
    x = torch.rand(3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    row: dict[str, Any] = {"model": name, **flop_saving(model, x, args.window)}
    fns = {} if args.memory_only else forwards(model, x, tuple(args.modes), args.batch)
    row["passes_per_s"] = measure_speed(fns, args.batch, args.window, args.rounds,
                                        args.batches) if fns else {}
    rates = row["passes_per_s"]
    for base in ("naive", "openvino"):
        if base in rates and "incremental" in rates:
            row[f"speedup_vs_{base}"] = rates["incremental"] / rates[base]
    if args.memory or args.memory_only:
        row["peak_mb"] = {m: _memory(name, m, args.batch, args.window) for m in args.modes}
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':<19}{'FLOP saving':>12}{'naive/s':>9}{'incr/s':>9}{'OV/s':>8}"
            f"{'vs naive':>9}{'vs OV':>7}   peak MB naive/incr/OV")
    lines = [head]
    for r in rows:
        p, mb = r["passes_per_s"], r.get("peak_mb", {})
        f = lambda v, w, d=1: f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        lines.append(
            f"{r['model']:<19}{f(r['saving'], 11, 2)}x{f(p.get('naive'), 9)}"
            f"{f(p.get('incremental'), 9)}{f(p.get('openvino'), 8)}"
            f"{f(r.get('speedup_vs_naive'), 8, 2)}x{f(r.get('speedup_vs_openvino'), 6, 2)}x   "
            + "/".join("-" if mb.get(m) is None else f"{mb[m]:.0f}" for m in MODES))
    return "\n".join(lines)


def decisions(rows: list[dict[str, Any]], device: str, args: argparse.Namespace
              ) -> dict[str, Any]:
    """The measured decisions ``incremental=auto`` reads, merged into the stored file."""
    doc = json.loads(DECISIONS_FILE.read_text()) if DECISIONS_FILE.exists() else {}
    doc.setdefault("measured", {})[device] = {
        "command": "python -m pda.tools.bench_incremental " + " ".join(sys.argv[1:]),
        "window": args.window, "batch": args.batch, "threads": torch.get_num_threads()}
    table = doc.setdefault("decisions", {}).setdefault(device, {})
    for r in rows:
        for base in ("naive", "openvino"):
            ratio = r.get(f"speedup_vs_{base}")
            if ratio is not None:
                backend = "torch" if base == "naive" else "openvino"
                table.setdefault(backend, {})[r["model"]] = {
                    "faster": ratio >= WIN_MARGIN, "speedup": round(ratio, 2),
                    "flop_saving": round(r["saving"], 2)}
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pda.tools.bench_incremental",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--modes", default=",".join(MODES), help="naive,incremental,openvino")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=2, help="batches per round and mode")
    ap.add_argument("--memory", action="store_true", help="peak memory, a subprocess each")
    ap.add_argument("--memory-only", action="store_true", help="peak memory, no speed")
    ap.add_argument("--write", action="store_true", help=f"update {DECISIONS_FILE.name}")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps({"peak_mb": probe_memory(args.probe, args.mode, args.batch,
                                                  args.window)}))
        return 0
    args.modes = args.modes.split(",")
    rows = []
    for name in args.models.split(","):
        rows.append(bench_model(name, args))
        print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    if args.write:
        doc = decisions(rows, "cpu", args)
        DECISIONS_FILE.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
