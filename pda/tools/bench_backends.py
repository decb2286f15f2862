"""``pda bench --backends``: every execution backend and precision side by side, in one run.

Each backend sweeps the same windows of the paper's grid (k = 10, padding 2, S = 10,
stride 1, conditional sampler, top-3 classes of a real photo) with the same seed, so the
samples are identical and the only difference is the runtime. Rates are taken in
interleaved rounds and each side reports its best round (outside load only slows a run
down); × eager = best / best against torch eager fp32. The error is max |Δ| of the
windows' weight of evidence (bits) against torch eager fp32 on the windows both swept: a
pixel's relevance is a mean of window values, so the map's error is at most this.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pda.defaults import PAPER
from pda.engine.backends import (
    BACKENDS,
    BackendReadout,
    build_readout,
    onnx_backend,
    torch_threads,
)
from pda.engine.backends import openvino_backend as ov_backend
from pda.engine.geometry import window_positions
from pda.engine.samplers import make_sampler
from pda.engine.sweep import Forward, Sweep, run_sweep, window_scores
from pda.errors import PDAError
from pda.params import ExplainParams, plan

K, PAD, S = PAPER["window"], PAPER["padding"], PAPER["samples"]
TOP = 3


def candidates(device: torch.device, backends: tuple[str, ...] | None,
               precisions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(backend, precision) pairs to measure: torch fp32 first (the reference)."""
    if backends is None:
        if device.type == "cuda":
            backends = ("torch", "compile")
        else:
            backends = tuple(b for b, ok in (("torch", True), ("compile", True),
                                             ("openvino", ov_backend.available()),
                                             ("onnxruntime", onnx_backend.available())) if ok)
    unknown = set(backends) - set(BACKENDS) - {"auto"}
    if unknown:
        raise PDAError(f"unknown backend {sorted(unknown)[0]!r}; use {', '.join(BACKENDS)}")
    pairs = [("torch", "fp32")]
    pairs += [(b, p) for b in backends for p in ("fp32", *precisions) if (b, p) not in pairs]
    return pairs


class _Row:
    """One (backend, precision): its readout, build time, rates and last sweep."""

    def __init__(self, readout: BackendReadout, build_s: float, converted: bool) -> None:
        self.readout, self.build_s, self.converted = readout, build_s, converted
        self.rates: list[float] = []
        self.raw: list[float] = []
        self.sweep: Sweep | None = None
        self.windows = 0


def _conversions() -> int:
    return ov_backend.CONVERSIONS["count"] + onnx_backend.CONVERSIONS["count"]


def _build(model: Any, targets: list[int], backend: str, precision: str, bs: int,
           cache_dir: Path | None) -> _Row:
    before, t0 = _conversions(), time.perf_counter()
    readout = build_readout(model, "output", targets, backend=backend, precision=precision,
                            batch_size=bs, cache_dir=cache_dir)
    _sync(model.device)
    return _Row(readout, time.perf_counter() - t0, _conversions() > before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sweep(row: _Row, x: torch.Tensor, sampler: Any, n_windows: int, bs: int) -> float:
    """Sweep the first ``n_windows`` windows of the paper grid; passes/s."""
    t0 = time.perf_counter()
    with torch_threads(row.readout.torch_threads):  # what explain() does
        forward = Forward(row.readout, batch_size=bs, channels_last=row.readout.channels_last,
                          fixed_batch=row.readout.fixed_batch)
        row.sweep = run_sweep(forward, x, sampler, window=K, stride=1, samples=S,
                              window_ids=torch.arange(n_windows))
    _sync(x.device)
    return (row.sweep.forward_passes + 1) / (time.perf_counter() - t0)


def _raw(row: _Row, x: torch.Tensor, bs: int, seconds: float) -> float:
    """Images/s of the backend's readout on one batch of the unmodified image."""
    xb = x[None].expand(bs, *x.shape).contiguous(
        memory_format=torch.channels_last if row.readout.channels_last else
        torch.contiguous_format)
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or not n:
        row.readout(xb)
        _sync(x.device)
        n += bs
    return n / elapsed


def run_backend_bench(model: Any, x: torch.Tensor, stats: Any, *, batch_size: int,
                      backends: tuple[str, ...] | None = None,
                      precisions: tuple[str, ...] = (), seconds: float = 20.0,
                      rounds: int = 3, cache_dir: Path | None = None,
                      progress: Callable[[str], None] | None = None,
                      sampler_name: str = "conditional") -> dict[str, Any]:
    """Measure every (backend, precision) pair; returns the JSON document's ``backends``."""
    say = progress or (lambda _m: None)
    C, H, W = x.shape
    probs = torch.softmax(model(x[None]).float(), 1)[0]
    targets = probs.topk(min(TOP, probs.numel())).indices.tolist()
    sampler = make_sampler(sampler_name, x, K, window_positions(H, W, K, 1, device=x.device),
                           stats, padding=PAD)
    rows: dict[tuple[str, str], _Row] = {}
    errors: dict[str, str] = {}
    slice_s = seconds / rounds / 2  # half sweep, half raw
    for backend, precision in candidates(model.device, backends, precisions):
        say(f"building {backend} {precision} ...")
        try:
            row = _build(model, targets, backend, precision, batch_size, cache_dir)
        except PDAError as e:  # not offered here (precision, device): listed, not fatal
            errors[f"{backend} {precision}"] = str(e)
            continue
        warm = _sweep(row, x, sampler, max(1, 2 * batch_size // S), batch_size)
        row.windows = max(1, int(warm * slice_s / S))  # about one slice of work per round
        rows[backend, precision] = row
        say(f"  {row.readout.runtime.backend} {precision}: built in {row.build_s:.1f} s "
            f"({'converted' if row.converted else 'no conversion'}), ~{warm:.0f} passes/s")
    for r in range(rounds):
        for (backend, precision), row in rows.items():
            say(f"round {r + 1}/{rounds}: {backend} {precision}")
            row.rates.append(_sweep(row, x, sampler, row.windows, batch_size))
            row.raw.append(_raw(row, x, batch_size, slice_s))
    return {"sampler": sampler_name, "batch_size": batch_size, "targets": targets,
            "window": K, "padding": PAD,
            "samples": S, "rows": _report(model, rows), "unavailable": errors}


def _report(model: Any, rows: dict[tuple[str, str], _Row]) -> list[dict[str, Any]]:
    ref = rows["torch", "fp32"]
    out = []
    for (backend, precision), row in rows.items():
        n = min(row.windows, ref.windows)
        err = None
        if row.sweep is not None and ref.sweep is not None:
            a, b = (window_scores(_head(s, n), log_odds=True, num_classes=model.num_classes)
                    for s in (row.sweep, ref.sweep))
            err = float((a - b).abs().max())
        rate = max(row.rates)
        same = rows.get((backend, "fp32"))
        out.append({
            "backend": backend, "ran_as": row.readout.runtime.as_dict(), "precision": precision,
            "build_seconds": row.build_s, "converted": row.converted,
            "images_per_s": max(row.raw), "passes_per_s": rate,
            "x_eager": rate / max(ref.rates), "rounds": row.rates,
            # this precision against fp32 on the same backend, best / best
            "x_fp32": rate / max(same.rates) if same is not None else None,
            "raw_x_fp32": max(row.raw) / max(same.raw) if same is not None else None,
            # the sweep against its own backend's bare readout at this precision
            "sweep_over_raw": rate / max(row.raw),
            "max_abs_diff_bits": err, "estimates": _estimates(model, rate)})
    return out


def _head(sweep: Sweep, n: int) -> Sweep:
    """The first ``n`` windows of a sweep (every backend swept the same leading windows)."""
    return Sweep(base=sweep.base, window_means=sweep.window_means[:n],
                 positions=sweep.positions[:n], forward_passes=n * S)


def _estimates(model: Any, rate: float) -> dict[str, float]:
    """Seconds for the paper and the service-default sweeps at ``rate`` passes/s."""
    return {name: plan(params, model.input_size)["sweep_passes"] / rate
            for name, params in (("paper", ExplainParams(**PAPER)),
                                 ("default", ExplainParams()))}


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def _x(v: float | None) -> str:
    return "     -" if v is None else f"{v:>5.2f}x"


def format_backends(doc: dict[str, Any], header: str) -> str:
    """The human-readable table of :func:`run_backend_bench`."""
    b = doc["backends"]
    out = [header, f"backends: {b.get('sampler', 'conditional')} sweep k={b['window']}, "
           f"padding {b['padding']}, "
           f"S={b['samples']}, stride 1 (paper grid, leading windows), batch "
           f"{b['batch_size']}, top-{len(b['targets'])} classes; best of "
           f"{len(b['rows'][0]['rounds'])} interleaved rounds", "",
           "  backend      prec   build s  img/s  passes/s  sweep/raw  x eager  x fp32  "
           "err (bits)  paper job    default job"]
    for r in b["rows"]:
        err = "-" if r["max_abs_diff_bits"] is None else f"{r['max_abs_diff_bits']:.1e}"
        ran = r["ran_as"]["backend"]
        name = r["backend"] if ran == r["backend"] else f"{r['backend']}>{ran}"
        out.append(
            f"  {name:<12} {r['precision']:<5} {r['build_seconds']:>7.1f}{'*' * r['converted']:<1}"
            f" {r['images_per_s']:>6.1f}  {r['passes_per_s']:>8.1f}  {r['sweep_over_raw']:>9.2f}"
            f"  {r['x_eager']:>6.2f}x  {_x(r['x_fp32'])}  {err:>10}  "
            f"{_duration(r['estimates']['paper']):>10}  "
            f"{_duration(r['estimates']['default']):>11}")
    out.append("  (* converted in this run; otherwise read from the cache or nothing to convert;"
               " sweep/raw: passes/s over the same row's img/s; x fp32: passes/s over the same"
               " backend's fp32 row)")
    out += [f"  not measured: {k}: {v}" for k, v in b["unavailable"].items()]
    return "\n".join(out)


def main(args: Any, model: Any, x: torch.Tensor, stats: Any, batch_size: int,
         header: str, cache_dir: Path | None) -> dict[str, Any]:
    """``pda bench --backends``: measure, print progress on stderr, return the document."""
    wanted = None if args.backends in ("all", "") else tuple(
        b.strip() for b in args.backends.split(",") if b.strip())
    precisions = tuple(p.strip() for p in (args.precisions or "").split(",") if p.strip())
    samplers = tuple(s.strip() for s in (args.samplers or "conditional").split(",")
                     if s.strip())
    docs = [run_backend_bench(
        model, x, stats, batch_size=batch_size, backends=wanted, precisions=precisions,
        seconds=args.seconds, rounds=args.rounds, cache_dir=cache_dir, sampler_name=name,
        progress=None if args.json else lambda m: print(m, file=sys.stderr, flush=True))
        for name in samplers]
    # one sampler: the document as before; several: one table each, in the order asked
    return {"backends": docs[0]} if len(docs) == 1 else {"backends": docs[0],
                                                        "by_sampler": docs}
