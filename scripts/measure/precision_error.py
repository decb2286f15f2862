"""Is bf16 within the map's own Monte Carlo noise? (docs/performance.md, "Precision")

On each evaluation photo (pda/data/evaluation), maps only (``faithfulness=False``):

- the default preset (conditional, window 32, stride 8, 2 samples) in f32 with seed 0
  and with seed 1: their difference is the noise floor of the default map;
- the same with seed 0 in bf16 (the same samples as f32 seed 0): its difference from
  f32 seed 0 is the precision's error;
- the ``fast`` preset (occlusion, deterministic) in f32 and bf16: no sampling noise, so
  its bf16 error is given as a fraction of the map's peak.

Per photo, over its targets' maps (T, H, W) together: relative L2 (||a - b|| / ||b||)
and max |a - b|; the ratio bf16 error / seed-to-seed difference; medians, 95th
percentiles and bootstrap 95 % intervals over photos. The targets are fixed to the f32
run's top 3, so every map explains the same classes.

bf16 runs natively where the CPU offers it to OpenVINO (``--bf16 native``: backend
openvino, precision bf16). On a CPU without bf16 (``--bf16 emulated``, chosen by
``auto`` there) the model runs in f32 torch with bf16 numerics emulated: weights
rounded to bf16, and the input and output of every convolution and linear layer rounded
to bf16 (bf16 storage of weights and activations, fp32 accumulation: what AVX512_BF16,
AMX and tensor-core kernels do). ``--check-emulation`` compares that emulation with torch's
own bf16 autocast on a few perturbed images first (autocast on such a CPU is a slow
reference path, so only a few).

    python scripts/measure/precision_error.py [--photos 30] [--bf16 auto|native|emulated]
        [--out studies/performance/precision_error.json] [--check-emulation]

Writes the JSON (per-photo rows and the summary; rewritten after every photo, so an
interrupted run keeps what it measured) and prints the summary table.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's pda, not an installed one

import torch  # noqa: E402
from torch import nn  # noqa: E402

import pda.library as lib  # noqa: E402
from pda.engine.device import resolve_device  # noqa: E402
from pda.models.registry import LoadedModel, get_model  # noqa: E402

PHOTOS = ROOT / "pda" / "data" / "evaluation"
MODEL = "efficientnet_lite0"
BOOT = 10_000


def _round_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype) if t.is_floating_point() else t


def bf16_emulated(module: nn.Module) -> nn.Module:
    """A copy of ``module`` computing in f32 with bf16 storage: every Conv2d and Linear
    gets bf16-rounded weights and bias, and bf16-rounded input and output."""
    emu = copy.deepcopy(module).eval()
    for m in emu.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                m.weight.copy_(_round_bf16(m.weight))
                if m.bias is not None:
                    m.bias.copy_(_round_bf16(m.bias))
            m.register_forward_pre_hook(lambda _m, args: tuple(_round_bf16(a) for a in args))
            m.register_forward_hook(lambda _m, _args, out: _round_bf16(out))
    return emu


def native_bf16() -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_emulation(model: LoadedModel, emu: LoadedModel, n: int = 2) -> dict[str, Any]:
    """Emulated bf16 and torch's bf16 autocast against f32 on ``n`` perturbed photos:
    max |Δp| of the softmax (all classes) and the top-3 log2-odds change."""
    from pda.engine.inputs import model_input

    photo = sorted(PHOTOS.glob("*.jpg"))[0]
    x = model_input(photo, model.input_size, "squash").x
    g = torch.Generator().manual_seed(0)
    xb = (x[None] + 0.1 * torch.randn(n, *x.shape, generator=g)).clamp(0, 1)
    with torch.inference_mode():
        p32 = torch.softmax(model(xb).float(), 1)
        pemu = torch.softmax(emu(xb).float(), 1)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pamp = torch.softmax(model(xb).float(), 1)
        amp_s = time.perf_counter() - t0

    def lo(p: torch.Tensor) -> torch.Tensor:
        p = p.double().clamp(1e-12, 1 - 1e-12)
        return torch.log2(p) - torch.log2(1 - p)

    top = p32.topk(3, dim=1).indices
    d = {name: (lo(q.gather(1, top)) - lo(p32.gather(1, top))).abs()
         for name, q in (("emulated", pemu), ("autocast", pamp))}
    return {"images": n, "autocast_seconds": amp_s,
            "max_abs_dp_emulated": float((pemu - p32).abs().max()),
            "max_abs_dp_autocast": float((pamp - p32).abs().max()),
            "max_abs_dp_emulated_vs_autocast": float((pemu - pamp).abs().max()),
            "top3_log2odds_mean_abs_emulated": float(d["emulated"].mean()),
            "top3_log2odds_mean_abs_autocast": float(d["autocast"].mean()),
            "top3_log2odds_max_abs_emulated": float(d["emulated"].max()),
            "top3_log2odds_max_abs_autocast": float(d["autocast"].max())}


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = a.astype(np.float64) - b.astype(np.float64)
    return {"rel_l2": float(np.linalg.norm(d) / np.linalg.norm(b)),
            "max_abs": float(np.abs(d).max()), "peak": float(np.abs(b).max())}


def measure_photo(photo: Path, model: LoadedModel, bf16: LoadedModel | None,
                  presets: list[str]) -> dict[str, Any]:
    """The photo's maps and their differences (see the module docstring)."""
    row: dict[str, Any] = {"photo": photo.name}
    common = {"faithfulness": False, "incremental": "off"}
    f32 = {"model": model, "backend": "auto", "precision": "fp32"}
    low = ({"model": model, "backend": "openvino", "precision": "bf16"} if bf16 is None
           else {"model": bf16, "backend": "torch", "precision": "fp32"})
    t0 = time.perf_counter()
    if "default" in presets:
        r0 = lib.explain(photo, seed=0, **common, **f32)
        target = ",".join(map(str, r0.targets))
        r1 = lib.explain(photo, seed=1, target=target, **common, **f32)
        rb = lib.explain(photo, seed=0, target=target, **common, **low)
        seed_d, prec_d = _diff(r1.relevance, r0.relevance), _diff(rb.relevance, r0.relevance)
        row["default"] = {"targets": r0.targets, "runtime_f32": r0.document["runtime"],
                          "seed": seed_d, "bf16": prec_d,
                          "ratio_rel_l2": prec_d["rel_l2"] / seed_d["rel_l2"],
                          "ratio_max_abs": prec_d["max_abs"] / seed_d["max_abs"]}
    if "fast" in presets:
        f0 = lib.explain(photo, preset="fast", **common, **f32)
        target = ",".join(map(str, f0.targets))
        fb = lib.explain(photo, preset="fast", target=target, **common, **low)
        d = _diff(fb.relevance, f0.relevance)
        row["fast"] = {"targets": f0.targets, "bf16": d,
                       "max_abs_over_peak": d["max_abs"] / d["peak"]}
    row["seconds"] = time.perf_counter() - t0
    return row


def _boot_ci(v: np.ndarray, stat=np.median) -> list[float]:
    g = np.random.default_rng(0)
    draws = [stat(v[g.integers(0, len(v), len(v))]) for _ in range(BOOT)]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def _stats(v: list[float]) -> dict[str, Any]:
    a = np.asarray(v, dtype=np.float64)
    return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max()), "mean": float(a.mean()),
            "median_ci95": _boot_ci(a), "mean_ci95": _boot_ci(a, np.mean)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"photos": len(rows)}
    dd = [r["default"] for r in rows if "default" in r]
    if dd:
        out["default"] = {
            "seed_rel_l2": _stats([d["seed"]["rel_l2"] for d in dd]),
            "bf16_rel_l2": _stats([d["bf16"]["rel_l2"] for d in dd]),
            "seed_max_abs": _stats([d["seed"]["max_abs"] for d in dd]),
            "bf16_max_abs": _stats([d["bf16"]["max_abs"] for d in dd]),
            "ratio_rel_l2": _stats([d["ratio_rel_l2"] for d in dd]),
            "ratio_max_abs": _stats([d["ratio_max_abs"] for d in dd]),
            "bf16_max_abs_over_peak": _stats([d["bf16"]["max_abs"] / d["bf16"]["peak"]
                                              for d in dd])}
    ff = [r["fast"] for r in rows if "fast" in r]
    if ff:
        out["fast"] = {"bf16_max_abs_over_peak": _stats([f["max_abs_over_peak"] for f in ff]),
                       "bf16_rel_l2": _stats([f["bf16"]["rel_l2"] for f in ff])}
    if dd and ff:
        out["meets_bar"] = bool(out["default"]["ratio_rel_l2"]["p95"] < 0.1
                                and out["default"]["ratio_max_abs"]["p95"] < 0.1
                                and out["fast"]["bf16_max_abs_over_peak"]["max"] < 0.01)
    return out


def format_summary(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    lines = [f"precision error, {s['photos']} photos, bf16 {doc['bf16']}, {doc['date']}, "
             f"{doc['machine']}", "",
             "  quantity                              median   p95      max      "
             "median 95% CI"]

    def line(label: str, st: dict[str, Any]) -> str:
        lo, hi = st["median_ci95"]
        return (f"  {label:<36} {st['median']:.2e} {st['p95']:.2e} {st['max']:.2e} "
                f"[{lo:.2e}, {hi:.2e}]")

    if d := s.get("default"):
        lines += [line("default: f32 seed 0 vs 1, rel L2", d["seed_rel_l2"]),
                  line("default: bf16 vs f32, rel L2", d["bf16_rel_l2"]),
                  line("default: bf16 / seed, rel L2", d["ratio_rel_l2"]),
                  line("default: f32 seed 0 vs 1, max |d| bits", d["seed_max_abs"]),
                  line("default: bf16 vs f32, max |d| bits", d["bf16_max_abs"]),
                  line("default: bf16 / seed, max |d|", d["ratio_max_abs"]),
                  line("default: bf16 max |d| / peak", d["bf16_max_abs_over_peak"])]
    if f := s.get("fast"):
        lines += [line("fast: bf16 max |d| / peak", f["bf16_max_abs_over_peak"]),
                  line("fast: bf16 vs f32, rel L2", f["bf16_rel_l2"])]
    if "meets_bar" in s:
        lines += ["", f"  bar (p95 ratios < 0.1, fast max/peak < 1 %): "
                      f"{'met' if s['meets_bar'] else 'NOT met'}"]
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), "").split()
    name = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in name.splitlines()
                  if ln.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
            "avx512": any(f.startswith("avx512") for f in flags)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=30, help="the first N evaluation photos")
    ap.add_argument("--skip", type=int, default=0, help="start at photo N (0-based)")
    ap.add_argument("--bf16", choices=("auto", "native", "emulated"), default="auto")
    ap.add_argument("--presets", default="default,fast")
    ap.add_argument("--out", type=Path, default=ROOT / "studies" / "performance" /
                    "precision_error.json")
    ap.add_argument("--check-emulation", action="store_true")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 on a loaded machine: the maps do not depend on it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = args.bf16 if args.bf16 != "auto" else ("native" if native_bf16() else "emulated")
    model = get_model(MODEL, resolve_device("cpu"))
    emu = None
    if mode == "emulated":
        emu = LoadedModel(f"{MODEL}-bf16-emulated", bf16_emulated(model.module),
                          model.input_size, model.mean, model.std, model.labels,
                          model.device, "module")
    machine = _machine()
    doc: dict[str, Any] = {
        "command": "python scripts/measure/precision_error.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine["cpu"], "cpu": machine, "model": MODEL, "bf16": mode,
        "presets": args.presets.split(","), "load_before": os.getloadavg(), "rows": []}
    if args.resume and args.out.exists():
        doc["rows"] = json.loads(args.out.read_text())["rows"]
    if args.check_emulation and emu is not None:
        doc["emulation_check"] = check_emulation(model, emu)
        print(json.dumps(doc["emulation_check"], indent=1), flush=True)
    done = {r["photo"] for r in doc["rows"]}
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))
    for photo in photos[args.skip:args.skip + args.photos]:
        if photo.name in done:
            continue
        row = measure_photo(photo, model, emu, doc["presets"])
        row["load"] = os.getloadavg()
        doc["rows"].append(row)
        doc["summary"] = summary(doc["rows"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
        d = row.get("default", {})
        print(f"{photo.name}: {row['seconds']:.0f} s, ratio rel L2 "
              f"{d.get('ratio_rel_l2', float('nan')):.3f}, max "
              f"{d.get('ratio_max_abs', float('nan')):.3f}; fast max/peak "
              f"{row.get('fast', {}).get('max_abs_over_peak', float('nan')):.2e}; "
              f"load {row['load'][0]:.1f}", flush=True)
    doc["load_after"] = os.getloadavg()
    doc["summary"] = summary(doc["rows"])
    args.out.write_text(json.dumps(doc, indent=1))
    print(format_summary(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
