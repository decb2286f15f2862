"""``pda bench``: the model's speed limit and the sweep beside it, in one run.

Same model, input and machine throughout: raw images/s per batch size and memory layout;
sweep passes/s per sampler at the paper's window (k = 10, padding 2, S = 10) on a real
photo at raw's best batch and layout; occlusion against ``captum.attr.Occlusion`` on the
same windows; job estimates; autocast precision beside fp32 (GPU, or ``--precisions``).
The machine may be shared and noisy: competing measurements run in interleaved rounds and
each side reports its best round (timeit's rule: outside load only ever slows a run
down); ratios are best / best, with the median of per-round ratios beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pda.defaults import PAPER
from pda.engine.backends import native_bf16, resolve_backend
from pda.engine.device import resolve_device
from pda.engine.geometry import window_positions
from pda.engine.samplers import SAMPLERS, make_sampler
from pda.engine.stats import SamplerStats, get_stats
from pda.engine.sweep import Forward, Sweep, relevance_maps, run_sweep
from pda.errors import InvalidParameterError
from pda.grid import count_windows
from pda.params import ExplainParams, plan

#: the default photo, inside the package (an installed ``pda bench`` has no examples/):
#: examples/chelsea.png centre-cropped to 224 x 224, what the default model sees of it
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "data" / "sample" / "chelsea.png"
CPU_BATCHES = (1, 2, 4, 8, 16, 32, 64)
GPU_BATCHES = (16, 32, 64, 128, 256, 512, 1024)
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
TOP = 3  # targets per sweep, as the service default (top3)
K, PAD, S = PAPER["window"], PAPER["padding"], PAPER["samples"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], int], seconds: float) -> float:
    """Units per second: call ``fn`` (returns the units it did) for ``seconds``, >= once."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or not n:
        n += fn()
    return n / elapsed


def _rounds(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Rates of each measurement, taken in turn ``rounds`` times (interleaved)."""
    runs = [{name: fn() for name, fn in fns.items()} for _ in range(rounds)]
    return {name: [r[name] for r in runs] for name in fns}


def _compare(a: list[float], b: list[float]) -> dict[str, float]:
    """Best rate of each side, their ratio, and the median of per-round ratios."""
    return {"ratio": max(a) / max(b),
            "ratio_median": statistics.median(x / y for x, y in zip(a, b, strict=True))}


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    name = next((ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines()
                 if ln.startswith("model name")), None) if info.exists() else None
    return f"{name or platform.processor()}, {torch.get_num_threads()} threads"


def _raw_call(model: Any, xb: torch.Tensor) -> Callable[[], int]:
    def call() -> int:
        model(xb)
        _sync(xb.device)
        return len(xb)

    return call


def measure_raw(model: Any, x: torch.Tensor, batch_sizes: tuple[int, ...], seconds: float,
                layouts: tuple[str, ...] = tuple(LAYOUTS)) -> list[dict[str, Any]]:
    """Images/s of the bare model for every batch size x layout; best of two passes."""
    rates: dict[tuple[str, int], float] = {}
    for _ in range(2):
        for name, fmt in ((n, LAYOUTS[n]) for n in layouts):
            for bs in batch_sizes:
                fastest = max((r for (n, _), r in rates.items() if n == name), default=0.0)
                if fastest and bs / fastest > max(seconds / 2, 2.0):  # one call: too long
                    break
                call = _raw_call(model, x.expand(bs, *x.shape).contiguous(memory_format=fmt))
                try:
                    call()  # warm-up: kernel choice, allocator
                    rate = _timed(call, seconds / 8)
                except torch.OutOfMemoryError:
                    break
                rates[name, bs] = max(rates.get((name, bs), 0.0), rate)
    return [{"layout": n, "batch_size": bs, "images_per_s": r}
            for (n, bs), r in sorted(rates.items())]


def _stride_for(H: int, W: int, k: int, per_window: int, passes: float) -> int:
    """The smallest stride whose sweep needs at most ``passes`` forward passes."""
    return next((s for s in range(1, max(H, W) + 1)
                 if count_windows(H, W, k, s) * per_window <= passes), max(H, W))


def _occlusion_geometry(H: int, W: int, passes: float) -> tuple[int, int]:
    """Window k >= 10 and stride s <= k dividing H - k and W - k, with at most ``passes``
    windows where possible: then Captum's windows are exactly ours (it adds a clipped
    last window where s does not divide, and refuses s > k)."""
    options = [(k, s) for k in range(K, min(H, W) + 1) for s in range(k, 0, -1)
               if (H - k) % s == 0 and (W - k) % s == 0]
    return next(((k, s) for k, s in options if count_windows(H, W, k, s) <= passes),
                min(options, key=lambda ks: count_windows(H, W, *ks)))


class _Bench:
    """The image, readout, batch size and layout shared by every sweep measurement."""

    def __init__(self, model: Any, x: torch.Tensor, stats: SamplerStats, bs: int,
                 layout: str) -> None:
        self.model, self.x, self.stats, self.bs, self.layout, self.dev = (
            model, x, stats, bs, layout, x.device)
        probs = torch.softmax(model(x[None]).float(), 1)[0]
        self.targets = probs.topk(min(TOP, probs.numel())).indices  # (T,)
        self.last: dict[str, Sweep] = {}

    def probs(self, b: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(b).float(), dim=1)  # (B, K)

    def sweep(self, sampler: str, k: int, stride: int, samples: int, precision: str = "fp32",
              targets: torch.Tensor | None = None) -> Sweep:
        C, H, W = self.x.shape
        idx = self.targets if targets is None else targets
        pos = window_positions(H, W, k, stride, device=self.dev)
        smp = make_sampler(sampler, self.x, k, pos, self.stats, padding=PAD)
        forward = Forward(lambda b: self.probs(b)[:, idx], batch_size=self.bs,
                          precision=precision, channels_last=self.layout == "channels_last")
        sw = run_sweep(forward, self.x, smp, window=k, stride=stride, samples=samples)
        _sync(self.dev)
        return sw

    def rate(self, key: str, *args: Any, **kwargs: Any) -> Callable[[], float]:
        """A measurement: one sweep, passes/s (base pass included); keeps the Sweep."""
        def fn() -> float:
            t0 = time.perf_counter()
            sw = self.last[key] = self.sweep(*args, **kwargs)
            return (sw.forward_passes + 1) / (time.perf_counter() - t0)

        return fn


def run_bench(
    model: Any, *, seconds: float = 10.0, rounds: int = 5,
    batch_sizes: tuple[int, ...] | None = None, samplers: tuple[str, ...] = SAMPLERS,
    precisions: tuple[str, ...] | None = None, image: Path | None = None,
    stats: SamplerStats | None = None, captum: bool = True, compile: bool = False,
    profile: bool = False, weights: str = "real",
) -> dict[str, Any]:
    """Measure everything listed in the module docstring; returns the JSON document."""
    from pda.engine.inputs import model_input

    dev = model.device
    x = model_input(image or SAMPLE_IMAGE, model.input_size, "crop").x.to(dev)
    C, H, W = x.shape
    batch_sizes = batch_sizes or (GPU_BATCHES if dev.type == "cuda" else CPU_BATCHES)
    if precisions is None:  # where the auto backend runs bf16 natively: beside its fp32
        precisions = (("bf16", "fp16") if dev.type == "cuda" else
                      ("bf16",) if native_bf16(dev, resolve_backend("auto", dev)) else ())
    raw = measure_raw(model, x, batch_sizes, seconds)
    best = max(raw, key=lambda r: r["images_per_s"])
    bs = best["batch_size"]
    doc: dict[str, Any] = {
        "model": model.name, "weights": weights, "device": str(dev), "machine": _machine(dev),
        "input_size": [H, W], "torch": torch.__version__, "seconds": seconds, "rounds": rounds,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "raw": {"best": best, "tried": raw}}
    bench = _Bench(model, x, stats or get_stats(), bs, best["layout"])
    slice_s = seconds / rounds
    # passes per measured sweep: about one slice of work, and never fewer than 8 batches
    target = max(8 * bs, best["images_per_s"] * slice_s)
    xb = x.expand(bs, C, H, W).contiguous(memory_format=LAYOUTS[best["layout"]])
    raw_call = _raw_call(model, xb)
    fns: dict[str, Callable[[], float]] = {"raw": lambda: _timed(raw_call, slice_s)}
    strides = {}
    for name in samplers:
        per = 1 if name == "constant" else S
        strides[name] = _stride_for(H, W, K, per, target)
        bench.sweep(name, K, _stride_for(H, W, K, per, 2 * bs), S)  # warm-up: new shapes
        fns[name] = bench.rate(name, name, K, strides[name], S)
    runs = _rounds(fns, rounds)
    doc["raw"]["rounds"] = runs["raw"]
    doc["sweep"] = [
        {"sampler": name, "window": K, "padding": PAD, "stride": strides[name],
         "samples": 1 if name == "constant" else S, "batch_size": bs, "layout": best["layout"],
         "passes": bench.last[name].forward_passes + 1, "passes_per_s": max(runs[name]),
         "raw_images_per_s": max(runs["raw"]), **_compare(runs[name], runs["raw"]),
         "rounds": runs[name]}
        for name in samplers
    ]
    doc["occlusion"] = measure_occlusion(bench, target, rounds) if captum else None
    doc["estimates"] = estimates(model, doc["sweep"])
    doc["precision"] = [measure_precision(bench, p, _stride_for(H, W, K, S, target), rounds)
                        for p in precisions]
    doc["backend_precision"] = measure_backend_precision(
        model, x, bench.stats, bs, precisions, seconds, rounds) if precisions else None
    if compile:
        doc["compile"] = measure_compile(model, x, best, seconds)
    if profile:
        doc["profile"] = [measure_profile(bench, name, strides[name]) for name in samplers]
    return doc


def measure_occlusion(bench: _Bench, passes: float, rounds: int) -> dict[str, Any]:
    """Constant sampler, S = 1, against captum.attr.Occlusion on the same windows."""
    try:
        from captum.attr import Occlusion
    except ImportError:
        return {"error": "captum is not installed: pip install 'pda[bench]'"}
    x, dev, (C, H, W) = bench.x, bench.dev, bench.x.shape
    k, stride = _occlusion_geometry(H, W, passes)
    t = int(bench.targets[0])
    n_w = count_windows(H, W, k, stride)
    fill = torch.as_tensor(bench.stats.mean, dtype=x.dtype, device=dev)  # (C,)
    baseline = fill[None, :, None, None].expand(1, C, H, W).contiguous()  # (1, C, H, W)
    inp = x[None].contiguous(memory_format=LAYOUTS[bench.layout])  # Captum keeps the layout
    maps: dict[str, torch.Tensor] = {}

    def ours() -> float:
        t0 = time.perf_counter()
        sw = bench.sweep("constant", k, stride, 1, targets=torch.tensor([t], device=dev))
        maps["pda"] = relevance_maps(sw, H, W, k, stride, log_odds=False)[0][0]  # (H, W)
        _sync(dev)
        return (n_w + 1) / (time.perf_counter() - t0)

    def theirs() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            attr = Occlusion(bench.probs).attribute(
                inp, sliding_window_shapes=(C, k, k), strides=(C, stride, stride),
                baselines=baseline, target=t, perturbations_per_eval=bench.bs)
        maps["captum"] = attr[0, 0]  # (H, W): the same for every channel
        _sync(dev)
        return (n_w + 1) / (time.perf_counter() - t0)

    ours(), theirs()  # warm-up
    runs = _rounds({"pda": ours, "captum": theirs}, rounds)
    diff = (maps["pda"].double() - maps["captum"].double()).abs()
    return {"window": k, "stride": stride, "samples": 1, "batch_size": bench.bs, "target": t,
            "windows": n_w, "pda_seconds": (n_w + 1) / max(runs["pda"]),
            "captum_seconds": (n_w + 1) / max(runs["captum"]),
            **_compare(runs["pda"], runs["captum"]),
            "max_abs_diff": float(diff.max()), "max_abs": float(maps["captum"].abs().max())}


def estimates(model: Any, sweeps: list[dict[str, Any]]) -> dict[str, Any]:
    """Paper and service-default sweeps (conditional sampler) at the measured rate; the
    whole job adds the faithfulness scores' passes (``job_passes``), run on the same
    backend at about the sweep's rate (docs/performance.md)."""
    rate = next((s["passes_per_s"] for s in sweeps if s["sampler"] == "conditional"), None)
    out: dict[str, Any] = {"passes_per_s": rate}
    for name, params in (("paper", ExplainParams(**PAPER)), ("default", ExplainParams())):
        n = plan(params, model.input_size)
        out[name] = {**params.model_dump(include={"window", "padding", "stride", "samples"}),
                     "windows": n["windows"], "passes": n["sweep_passes"],
                     "seconds": n["sweep_passes"] / rate if rate else None,
                     "job_passes": n["forward_passes"],
                     "job_seconds": n["forward_passes"] / rate if rate else None}
    return out


def measure_precision(bench: _Bench, precision: str, stride: int, rounds: int
                      ) -> dict[str, Any]:
    """Conditional sweep under autocast beside fp32 (same seed, so the same samples), and
    how far the relevance (bits) moves."""
    H, W = bench.x.shape[1:]
    bench.sweep("conditional", K, stride, S, precision)  # warm-up: autocast kernels
    runs = _rounds({p: bench.rate(p, "conditional", K, stride, S, p)
                    for p in ("fp32", precision)}, rounds)
    ref, got = (relevance_maps(bench.last[p], H, W, K, stride, log_odds=True,
                               num_classes=bench.model.num_classes)[0] for p in ("fp32", precision))
    d = (got - ref).abs()
    return {"precision": precision, "stride": stride, "passes_per_s": max(runs[precision]),
            "fp32_passes_per_s": max(runs["fp32"]), **_compare(runs[precision], runs["fp32"]),
            "max_abs_diff_bits": float(d.max()), "mean_abs_diff_bits": float(d.mean()),
            "max_abs_bits": float(ref.abs().max())}


def measure_backend_precision(model: Any, x: torch.Tensor, stats: SamplerStats, bs: int,
                              precisions: tuple[str, ...], seconds: float, rounds: int
                              ) -> dict[str, Any]:
    """fp32 and ``precisions`` side by side on the backend ``auto`` picks for the device
    (OpenVINO on a CPU where installed): sweep and raw rates in interleaved rounds, the
    ratio to fp32 and the window values' error (:mod:`pda.tools.bench_backends`)."""
    from pda.engine.backends import resolve_backend
    from pda.tools.bench_backends import run_backend_bench

    backend = resolve_backend("auto", model.device)
    doc = run_backend_bench(model, x, stats, batch_size=bs, backends=(backend,),
                            precisions=precisions, seconds=seconds, rounds=rounds)
    return {**doc, "backend": backend}


PROFILE_SCOPES = ("pda.sample", "pda.batch", "pda.forward", "pda.accumulate")


def measure_profile(bench: _Bench, sampler: str, stride: int) -> dict[str, Any]:
    """Share of one sweep's wall time in each engine scope (torch.profiler, CPU side; on
    a GPU the forward share is kernel launch and synchronisation)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        bench.sweep(sampler, K, stride, S)
        wall = time.perf_counter() - t0
    spent = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()
             if e.key in PROFILE_SCOPES}
    share = {key.removeprefix("pda."): spent.get(key, 0.0) / wall for key in PROFILE_SCOPES}
    return {"sampler": sampler, "stride": stride, "seconds": wall,
            "share": {**share, "other": 1 - sum(share.values())}}


def measure_compile(model: Any, x: torch.Tensor, best: dict[str, Any], seconds: float
                    ) -> dict[str, Any]:
    """Raw images/s of ``torch.compile(model)`` at the best batch and layout (the first,
    untimed call compiles)."""
    fast = torch.compile(model.module, dynamic=False)
    call = torch.inference_mode()(lambda b: fast(model.normalise(b)))
    t0 = time.perf_counter()
    (row,) = measure_raw(call, x, (best["batch_size"],), seconds, (best["layout"],))
    return {**row, "ratio": row["images_per_s"] / best["images_per_s"],
            "seconds": time.perf_counter() - t0}


def _duration(s: float | None) -> str:
    if s is None or s < 120:
        return "?" if s is None else f"{s:.1f} s"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(doc: dict[str, Any]) -> str:
    """The human-readable report."""
    (H, W), b, est = doc["input_size"], doc["raw"]["best"], doc["estimates"]
    out = [f"pda bench: {doc['model']} ({doc['weights']} weights), {H}x{W}, {doc['device']} "
           f"({doc['machine']}), torch {doc['torch']}, {doc['date']}",
           f"rates: best of {doc['rounds']} interleaved rounds; ratio = best/best (median of "
           "per-round ratios)", "", "raw model            batch   images/s"]
    out += [f"  {r['layout']:<18} {r['batch_size']:>5}   {r['images_per_s']:>8.1f}"
            for r in doc["raw"]["tried"]]
    out += [f"  best: batch {b['batch_size']}, {b['layout']}", "",
            f"PDA sweep (k={K}, padding {PAD}; batch {b['batch_size']}, {b['layout']})",
            "  sampler        S  stride   passes   passes/s   raw img/s   ratio"]
    out += [f"  {s['sampler']:<12} {s['samples']:>3}  {s['stride']:>6}  {s['passes']:>7}   "
            f"{s['passes_per_s']:>8.1f}   {s['raw_images_per_s']:>9.1f}   {s['ratio']:>5.2f} "
            f"({s['ratio_median']:.2f})" for s in doc["sweep"]]
    if (occ := doc.get("occlusion")) and "error" in occ:
        out += ["", f"occlusion vs Captum: skipped ({occ['error']})"]
    elif occ:
        out += ["", f"occlusion (constant sampler, S=1) vs captum.attr.Occlusion: k="
                f"{occ['window']}, stride {occ['stride']}, {occ['windows']} windows, batch "
                f"{occ['batch_size']}, target {occ['target']}",
                f"  pda {occ['pda_seconds']:.2f} s, captum {occ['captum_seconds']:.2f} s: pda "
                f"is {occ['ratio']:.2f}x as fast ({occ['ratio_median']:.2f}); max |map "
                f"difference| {occ['max_abs_diff']:.1e} (max |map| {occ['max_abs']:.1e})"]
    out += ["", f"estimates at the conditional rate ({est['passes_per_s'] or 0:.1f} passes/s)"]
    out += [f"  {label}: k={e['window']}, stride {e['stride']}, S={e['samples']}: "
            f"{e['windows']:,} windows, {e['passes']:,} passes -> {_duration(e['seconds'])} "
            f"(the job with its scores: {e['job_passes']:,} passes -> "
            f"{_duration(e['job_seconds'])})"
            for label, e in (("paper job      ", est["paper"]),
                             ("service default", est["default"]))]
    out += ["", "precision (conditional sweep under autocast, beside fp32)"] * bool(
        doc["precision"])
    out += [f"  {p['precision']}: {p['passes_per_s']:.1f} passes/s, {p['ratio']:.2f}x fp32 "
            f"({p['ratio_median']:.2f}); relevance vs fp32: max |diff| "
            f"{p['max_abs_diff_bits']:.2e} bits, mean {p['mean_abs_diff_bits']:.2e} "
            f"(max |fp32| {p['max_abs_bits']:.2f} bits)" for p in doc["precision"]]
    if bp := doc.get("backend_precision"):
        out += ["", f"precision on the auto backend ({bp['backend']}; conditional sweep k="
                f"{bp['window']}, S={bp['samples']}, batch {bp['batch_size']}; best of "
                f"{doc['rounds']} interleaved rounds)",
                "  backend      prec   img/s  passes/s  sweep/raw  x fp32  err (bits)"]
        out += [f"  {r['backend']:<12} {r['precision']:<5} {r['images_per_s']:>6.1f}  "
                f"{r['passes_per_s']:>8.1f}  {r['sweep_over_raw']:>9.2f}  "
                f"{_fmt(r['x_fp32'], '.2f'):>5}x  {_fmt(r['max_abs_diff_bits'], '.1e'):>10}"
                for r in bp["rows"]]
        out += [f"  not measured: {k}: {v}" for k, v in bp["unavailable"].items()]
    if comp := doc.get("compile"):
        out += ["", f"torch.compile (raw, batch {b['batch_size']}, {b['layout']}): "
                f"{comp['images_per_s']:.1f} images/s, {comp['ratio']:.2f}x eager "
                f"({comp['seconds']:.0f} s with compiling)"]
    if prof := doc.get("profile"):
        out += ["", "where a sweep's time goes (torch.profiler; % of wall time)",
                "  sampler      " + "".join(f"{k:>11}" for k in prof[0]["share"])]
        out += [f"  {p['sampler']:<12}" + "".join(f"{100 * v:>10.1f}%" for v in
                                                   p["share"].values()) for p in prof]
    return "\n".join(out)


def _csv(text: str | None, kind: type, option: str) -> tuple | None:
    try:
        return tuple(kind(t.strip()) for t in text.split(",") if t.strip()) if text else None
    except ValueError:
        raise InvalidParameterError(f"{option} {text!r}: expected a list like 1,4,16") from None


def main(args: argparse.Namespace) -> int:
    """Entry point of ``pda bench`` (options in pda/cli.py)."""
    from pda.models.registry import get_model

    opt = vars(args)
    samplers, rounds = _csv(opt.get("samplers"), str, "--samplers") or SAMPLERS, opt["rounds"]
    if set(samplers) - set(SAMPLERS) or args.seconds <= 0 or rounds < 1:
        raise InvalidParameterError(f"--samplers must name {', '.join(SAMPLERS)}; --seconds "
                                    f"must be > 0 and --rounds at least 1, got {samplers}")
    if opt.get("threads"):
        torch.set_num_threads(opt["threads"])
    model = get_model(args.model, resolve_device(args.device),
                      random_weights=bool(args.random_weights))
    if opt.get("backends"):
        return _main_backends(args, model)
    doc = run_bench(
        model, seconds=args.seconds, rounds=rounds, samplers=samplers,
        batch_sizes=_csv(opt.get("batch_sizes"), int, "--batch-sizes"),
        precisions=_csv(opt.get("precisions"), str, "--precisions"),
        image=Path(opt["image"]) if opt.get("image") else None,
        captum=not opt.get("no_captum"), compile=bool(opt.get("compile")),
        profile=bool(opt.get("profile")), weights="random" if args.random_weights else "real")
    print(json.dumps(doc, indent=2) if args.json else format_table(doc))
    return 0


def _main_backends(args: argparse.Namespace, model: Any) -> int:
    """``pda bench --backends``: the backends and precisions side by side
    (:mod:`pda.tools.bench_backends`)."""
    from pda.engine.device import auto_batch_size
    from pda.engine.inputs import model_input
    from pda.settings import get_settings
    from pda.tools.bench_backends import format_backends
    from pda.tools.bench_backends import main as backends_main

    dev = model.device
    x = model_input(Path(args.image) if args.image else SAMPLE_IMAGE, model.input_size,
                    "crop").x.to(dev)
    sizes = _csv(args.batch_sizes, int, "--batch-sizes")
    bs = sizes[0] if sizes else auto_batch_size(dev, model.input_size, model)
    doc = {"model": model.name, "weights": "random" if args.random_weights else "real",
           "device": str(dev), "machine": _machine(dev), "torch": torch.__version__,
           "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           **backends_main(args, model, x, get_stats(), bs, "",
                           get_settings().backend_cache_dir)}
    header = (f"pda bench: {doc['model']} ({doc['weights']} weights), {doc['device']} "
              f"({doc['machine']}), torch {doc['torch']}, {doc['date']}")
    tables = [format_backends({"backends": b}, header) for b in doc.get("by_sampler") or
              [doc["backends"]]]
    print(json.dumps(doc, indent=2) if args.json else "\n\n".join(tables))
    return 0
