"""Measure the approximate drill-down against the exact fine sweep (issue 13).

Two steps, both reproducible from the command line:

    python -m pda.tools.drilldown_bench exact examples/chelsea.png --window 10 --stride 4 \
        --samples 4
    python -m pda.tools.drilldown_bench compare --window 10 --stride 4 --samples 4

``exact`` sweeps every fine window once with the real model and keeps every sample's
readout (n_w, S, T) on disk under ``.cache/drilldown/`` (chunked, so an interrupted run
resumes). ``compare`` then replays drill-downs from that table: a drill-down's windows get
exactly the samples the full sweep drew for them (:func:`pda.engine.sweep.run_sweep` draws
per block of the full grid), so reading them from the table is the same computation as
sweeping them again, at no cost. It reports, per configuration, the passes used against
the exact sweep's, the true SSIM and max |difference| of the pixel maps, and the error
the drill-down estimated for itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..engine.drilldown.check import (
    DEFAULT_DRAWS,
    DEFAULT_TARGETED,
    DEFAULT_TILE,
    DEFAULT_UNIFORM_SHARE,
)
from ..engine.drilldown.refine import DEFAULT_MARGIN, drilldown
from ..engine.drilldown.ssim import ssim
from ..engine.geometry import window_positions, windows_to_pixels
from ..engine.samplers import make_sampler
from ..engine.stats import get_stats
from ..engine.sweep import DEFAULT_TRAIN_SIZE, Forward, run_sweep, weight_of_evidence

CACHE = Path(".cache/drilldown")
CHUNK_WINDOWS = 1024
TOP = 3


def _key(image: str, a: argparse.Namespace) -> str:
    return f"{Path(image).stem}-{a.model}-k{a.window}-s{a.stride}-S{a.samples}-seed{a.seed}"


def record_samples(readout: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   sampler: Any, ids: torch.Tensor, *, window: int, stride: int,
                   samples: int, batch_size: int, seed: int) -> torch.Tensor:
    """Each window's readout for each of its samples: (n, S, T), as the full sweep draws them.

    run_sweep calls the readout with the unmodified image first, then with the windows
    in id order, each window's S samples one after the other; keeping every output in
    call order therefore gives the (window, sample) table.
    """
    rows: list[torch.Tensor] = []

    def keep(b: torch.Tensor) -> torch.Tensor:
        out = readout(b)  # (B, T)
        rows.append(out.detach().double())
        return out

    run_sweep(Forward(keep, batch_size=batch_size), x, sampler, window=window, stride=stride,
              samples=samples, seed=seed, window_ids=ids)
    T = rows[0].shape[1]
    return torch.cat(rows[1:]).reshape(len(ids), samples, T)  # (n, S, T) window-major


def exact_table(image: str, a: argparse.Namespace) -> dict[str, Any]:
    """Every window's per-sample readouts of the top-``TOP`` classes, cached on disk."""
    from ..engine.inputs import model_input
    from ..models.registry import get_model

    out = CACHE / f"{_key(image, a)}.pt"
    if out.exists():
        return torch.load(out)
    model = get_model(a.model, torch.device("cpu"))
    x = model_input(image, model.input_size, "crop").x
    C, H, W = x.shape
    probs = torch.softmax(model(x[None]).float(), 1)[0]
    targets = probs.topk(TOP).indices  # (T,)
    pos = window_positions(H, W, a.window, a.stride)
    sampler = make_sampler("conditional", x, a.window, pos, get_stats(), padding=a.padding)
    parts = CACHE / _key(image, a)
    parts.mkdir(parents=True, exist_ok=True)
    n_w, t0 = len(pos), time.perf_counter()
    for start in range(0, n_w, CHUNK_WINDOWS):
        part = parts / f"{start:07d}.pt"
        if part.exists():
            continue
        ids = torch.arange(start, min(start + CHUNK_WINDOWS, n_w))
        per = record_samples(lambda b: torch.softmax(model(b).float(), 1)[:, targets], x,
                             sampler, ids, window=a.window, stride=a.stride,
                             samples=a.samples, batch_size=a.batch_size, seed=a.seed)
        torch.save(per, part)
        done = min(start + CHUNK_WINDOWS, n_w)
        print(f"{out.stem}: {done}/{n_w} windows, {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    table = {
        "base": probs[targets].double(), "targets": targets,
        "samples": torch.cat([torch.load(p) for p in sorted(parts.glob("*.pt"))]),  # (n_w,S,T)
        "num_classes": model.num_classes, "height": H, "width": W,
        "window": a.window, "stride": a.stride, "seed": a.seed, "image": image,
    }
    torch.save(table, out)
    return table


class TableScores:
    """A drill-down's ScoreFn read from an exact table: the same numbers as sweeping."""

    def __init__(self, table: dict[str, Any], samples: int) -> None:
        per = table["samples"][:, :samples].double()  # (n_w, S', T) the first S' samples
        self.base, self.means = table["base"], per.mean(1)  # (T,), (n_w, T)
        self.num_classes, self.samples = table["num_classes"], samples
        self.windows = 0
        self.calls = 0

    def scores(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        means = self.means if ids is None else self.means[ids]
        return weight_of_evidence(self.base[None].expand_as(means), means, DEFAULT_TRAIN_SIZE,
                                  self.num_classes)  # (n, T)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.windows += len(ids)
        self.calls += 1
        return self.scores(ids)

    @property
    def passes(self) -> int:
        return self.windows * self.samples + self.calls  # one unmodified-image pass a call


def compare_one(table: dict[str, Any], samples: int, config: dict[str, Any],
                seeds: range) -> dict[str, Any]:
    """One drill-down configuration on one exact table: cost, true and estimated error."""
    H, W, k, s = table["height"], table["width"], table["window"], table["stride"]
    exact_scores = TableScores(table, samples).scores()  # (n_w, T)
    exact, _ = windows_to_pixels(exact_scores, H, W, k, s)  # (T, H, W)
    n_w = len(exact_scores)
    rows = []
    for seed in seeds:  # the estimator's draws; the sweep's samples are the table's
        fn = TableScores(table, samples)
        d = drilldown(fn, H, W, k, s, seed=seed, **config)
        approx, _ = windows_to_pixels(d.scores, H, W, k, s)
        peak = exact.abs().flatten(1).amax(1)  # (T,)
        rows.append({
            "passes": fn.passes, "check_passes": d.check_windows * samples,
            "true_ssim": ssim(approx, exact).tolist(),
            "true_max_abs_diff": ((approx - exact).abs().flatten(1).amax(1) / peak).tolist(),
            "est_ssim": [t["ssim"] for t in d.error["per_target"]],
            "est_ci95": [t["ssim_ci95"] for t in d.error["per_target"]],
            "est_max_abs_diff": [t["max_abs_diff"] / float(p)
                                 for t, p in zip(d.error["per_target"], peak, strict=True)],
        })
    exact_passes = n_w * samples + 1
    first = rows[0]
    noise = None
    if samples >= 2 and table["samples"].shape[1] >= 2 * (samples // 2):
        # the exact method's own reproducibility: two exact maps from disjoint samples
        h = samples // 2
        halves = [{**table, "samples": table["samples"][:, i * h:(i + 1) * h]} for i in (0, 1)]
        maps = [windows_to_pixels(TableScores(t, h).scores(), H, W, k, s)[0] for t in halves]
        noise = min(ssim(maps[0], maps[1]).tolist())
    ci_hits = [lo <= tr <= hi for r in rows for (lo, hi), tr in
               zip(r["est_ci95"], r["true_ssim"], strict=True)]
    est_err = [abs(e - tr) for r in rows for e, tr in
               zip(r["est_ssim"], r["true_ssim"], strict=True)]
    return {
        **config, "image": Path(table["image"]).stem, "samples": samples,
        "exact_passes": exact_passes, "passes": first["passes"],
        "saving": exact_passes / first["passes"],
        "saving_without_check": exact_passes / (first["passes"] - first["check_passes"]),
        "true_ssim_min": min(first["true_ssim"]), "true_ssim": first["true_ssim"],
        "exact_vs_exact_ssim_half_samples": noise,
        "true_max_abs_diff_rel": max(first["true_max_abs_diff"]),
        "est_ssim_min": min(first["est_ssim"]),
        "est_max_abs_diff_rel": max(first["est_max_abs_diff"]),
        "estimator": {"seeds": len(rows), "ci95_coverage": sum(ci_hits) / len(ci_hits),
                      "mean_abs_error": sum(est_err) / len(est_err),
                      "max_abs_error": max(est_err)},
    }


def partial_table(image: str, a: argparse.Namespace) -> dict[str, Any] | None:
    """The finished chunks of an unfinished ``exact`` run, as the exact table of the image's
    top rows: the windows of the first complete grid rows, an image (r-1)*s + k pixels tall.

    On a busy machine this allows a comparison before the whole sweep is done; windows
    in those rows have their full-sweep samples, so nothing else changes.
    """
    from ..engine.inputs import model_input
    from ..models.registry import get_model

    parts = sorted((CACHE / _key(image, a)).glob("*.pt"))
    if not parts:
        return None
    per = torch.cat([torch.load(p) for p in parts])  # (n, S, T)
    model = get_model(a.model, torch.device("cpu"))
    x = model_input(image, model.input_size, "crop").x
    H, W = x.shape[1:]
    gw = (W - a.window) // a.stride + 1
    rows = len(per) // gw
    probs = torch.softmax(model(x[None]).float(), 1)[0]
    targets = probs.topk(TOP).indices
    return {"base": probs[targets].double(), "targets": targets,
            "samples": per[: rows * gw], "num_classes": model.num_classes,
            "height": (rows - 1) * a.stride + a.window, "width": W, "window": a.window,
            "stride": a.stride, "seed": a.seed, "image": image}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pda.tools.drilldown_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["exact", "compare"])
    p.add_argument("images", nargs="*", default=["examples/chelsea.png"])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--padding", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--use-samples", type=int, help="compare with the first S' samples")
    p.add_argument("--factors", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    p.add_argument("--interpolations", nargs="+", default=["linear"])
    p.add_argument("--margins", type=int, nargs="+", default=[DEFAULT_MARGIN])
    p.add_argument("--criteria", nargs="+", default=["magnitude"])
    p.add_argument("--tiles", type=int, nargs="+", default=[DEFAULT_TILE])
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS)
    p.add_argument("--targeted", type=int, default=DEFAULT_TARGETED)
    p.add_argument("--shares", type=float, nargs="+", default=[DEFAULT_UNIFORM_SHARE])
    p.add_argument("--seeds", type=int, default=5, help="estimator seeds per configuration")
    p.add_argument("--partial", action="store_true",
                   help="compare on the finished rows of an unfinished exact run")
    p.add_argument("--out", help="write the comparison as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.step == "exact":
        for image in a.images:
            exact_table(image, a)
        return 0
    results = []
    for image in a.images:
        done = (CACHE / f"{_key(image, a)}.pt").exists()
        table = exact_table(image, a) if done or not a.partial else partial_table(image, a)
        if table is None:
            continue
        print(f"{image}: {table['height']}x{table['width']} px", flush=True)
        for config in configs(a):
            r = compare_one(table, a.use_samples or a.samples, config, range(a.seeds))
            results.append(r)
            print(_line(r), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


def configs(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The grid of drill-down configurations to compare (coarse factor x fraction x ...)."""
    out = []
    for factor in a.factors:
        for fraction in a.fractions:
            for interp in a.interpolations:
                for margin in a.margins:
                    for criterion in a.criteria:
                        out += [{
                            "coarse_stride": factor * a.stride, "fraction": fraction,
                            "interpolation": interp, "margin": margin, "criterion": criterion,
                            "check": {"tile": tile, "draws": a.draws, "targeted": a.targeted,
                                      "uniform_share": share}}
                            for tile in a.tiles for share in a.shares]
    return out


def _line(r: dict[str, Any]) -> str:
    e = r["estimator"]
    return (f"{r['image']:<13} c{r['coarse_stride']:<3} r{r['fraction']:<5} "
            f"{r['interpolation'][:3]} m{r['margin']} {r['criterion'][:3]} "
            f"t{r['check']['tile']} u{r['check']['uniform_share']} "
            f"saving {r['saving']:5.2f}x ({r['saving_without_check']:5.2f}x w/o check) "
            f"SSIM true {r['true_ssim_min']:.3f} est {r['est_ssim_min']:.3f} "
            f"maxdiff true {r['true_max_abs_diff_rel']:.3f} est {r['est_max_abs_diff_rel']:.3f} "
            f"| exact-vs-exact(S/2) {r['exact_vs_exact_ssim_half_samples'] or float('nan'):.3f} "
            f"| est |err| mean {e['mean_abs_error']:.3f} max {e['max_abs_error']:.3f} "
            f"CI cover {e['ci95_coverage']:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
