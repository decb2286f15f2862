"""``pda evaluate DIR``: faithfulness and cost of several configurations over a folder.

Every image is explained under every configuration (top-1 class by default); each map is
scored by deletion/insertion AUC (:mod:`pda.engine.faithfulness`) against random block
orders. The table gives per configuration the mean AUCs with 95% bootstrap confidence
intervals over the images, the mean gap to the random baseline (map minus random: below
0 is good for deletion, above 0 for insertion), and mean seconds and forward passes per
image. docs/faithfulness.md shows the table for the shipped reference photos.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import DEFAULT_SAMPLES, DEFAULT_STRIDE, DEFAULT_WINDOW, DETERMINISTIC_SAMPLERS

#: the configurations ``pda evaluate`` knows; each is ExplainParams fields over the defaults
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "marginal": {"sampler": "marginal"},
    "constant": {"sampler": "constant"},  # plain occlusion with the reference mean colour
    "samples16": {"samples": 16},  # less sample noise, same geometry
    "wide": {"window": 32, "stride": 16},  # more context per window, coarser map
    "context": {"window": 32, "stride": 8},  # wide's context at the default's resolution
    "fine": {"window": 10, "stride": 4, "samples": 10},  # the finer settings
    "drilldown": {"drilldown": 0.25},  # approximate: coarse sweep, top quarter refined
}
#: what runs when --configs is not given (``fine`` costs ~29,000 passes an image: opt in)
DEFAULT_CONFIGS = ("default", "marginal", "constant", "wide", "drilldown")
#: the shipped reference photos (pda/data/reference, docs/algorithm.md §3)
REFERENCE_DIR = Path(__file__).parent / "data" / "reference"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
BOOTSTRAP = 2000
METRICS = ("deletion_auc", "insertion_auc", "deletion_gap", "insertion_gap")


def list_images(directory: Path, limit: int | None = None) -> list[Path]:
    """Image files directly in ``directory``, sorted by name, at most ``limit``."""
    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files[:limit] if limit else files


def pick_configs(names: list[str] | None) -> dict[str, dict[str, Any]]:
    """The named configurations, in the order given (default: ``DEFAULT_CONFIGS``)."""
    from .errors import InvalidParameterError

    chosen = names or list(DEFAULT_CONFIGS)
    unknown = [n for n in chosen if n not in CONFIGS]
    if unknown:
        raise InvalidParameterError(
            f"unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    return {n: CONFIGS[n] for n in chosen}


def mean_ci(values: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval (a point interval for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float(v.mean()), float(v.mean())
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (BOOTSTRAP, len(v)))].mean(1)  # (BOOTSTRAP,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


def run(
    model: Any,
    images: list[tuple[str, Any]],
    configs: dict[str, dict[str, Any]],
    stats: Any,
    *,
    target: str = "top1",
    seed: int = 0,
    batch_size: int | None = None,
    log: Callable[[str], None] = lambda _m: None,
    on_explanation: Callable[[str, str, Any], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (configuration, image): the top target's scores, time and passes.
    ``images`` are (name, pixel-space tensor (3, H, W)) pairs; ``on_explanation(config,
    image, explanation)`` sees every explanation (scripts/faithfulness_study.py keeps the
    maps)."""
    from .engine.explain import explain
    from .params import ExplainParams

    rows = []
    for cname, fields in configs.items():
        params = ExplainParams(**{**fields, "target": target, "seed": seed,
                                  "faithfulness": True})
        for name, x in images:
            t = time.perf_counter()
            expl = explain(model, x, params, stats, batch_size=batch_size, backend="auto")
            seconds = time.perf_counter() - t
            f = expl.faithfulness[0]
            row = {
                "config": cname, "image": name, "target": expl.targets[0],
                "label": expl.labels[0], "probability": _probability(expl),
                "deletion_auc": f["deletion_auc"], "insertion_auc": f["insertion_auc"],
                "baseline_deletion_auc": f["baseline"]["deletion_auc"],
                "baseline_insertion_auc": f["baseline"]["insertion_auc"],
                "deletion_gap": f["deletion_auc"] - f["baseline"]["deletion_auc"],
                "insertion_gap": f["insertion_auc"] - f["baseline"]["insertion_auc"],
                "seconds": seconds,
                "sweep_passes": expl.forward_passes - expl.faithfulness_passes,
                "faithfulness_passes": expl.faithfulness_passes,
            }
            log(f"{cname:<10} {name:<28} del {row['deletion_auc']:.3f} (random "
                f"{row['baseline_deletion_auc']:.3f})  ins {row['insertion_auc']:.3f} (random "
                f"{row['baseline_insertion_auc']:.3f})  {seconds:.1f} s")
            rows.append(row)
            if on_explanation is not None:
                on_explanation(cname, name, expl)
    return rows


def _probability(expl: Any) -> float:
    t = expl.targets[0]
    return next((p["probability"] for p in expl.prediction if p["class_index"] == t), float("nan"))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration (first-seen order): n, each metric's mean and 95% CI, mean
    seconds and passes per image."""
    table = []
    for cname in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == cname]
        entry: dict[str, Any] = {"config": cname, "images": len(mine)}
        for m in METRICS + ("baseline_deletion_auc", "baseline_insertion_auc"):
            mean, lo, hi = mean_ci([r[m] for r in mine])
            entry[m] = {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)]}
        entry["deletion_beats_random"] = sum(r["deletion_gap"] < 0 for r in mine)
        entry["seconds"] = round(float(np.mean([r["seconds"] for r in mine])), 2)
        entry["sweep_passes"] = round(float(np.mean([r["sweep_passes"] for r in mine])))
        entry["faithfulness_passes"] = round(float(np.mean(
            [r["faithfulness_passes"] for r in mine])))
        table.append(entry)
    return table


def markdown(table: list[dict[str, Any]], configs: dict[str, dict[str, Any]]) -> str:
    """The table as GitHub markdown."""
    def cell(e: dict[str, Any], m: str) -> str:
        v = e[m]
        return f"{v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"

    head = ("| config | settings | images | deletion AUC ↓ | random deletion | deletion − "
            "random ↓ | del < random | insertion AUC ↑ | random insertion | insertion − "
            "random ↑ | s / image | sweep passes | score passes |")
    lines = [head, "|" + "---|" * 13]
    for e in table:
        lines.append(
            f"| {e['config']} | {_settings(configs.get(e['config'], {}))} | {e['images']} | "
            f"{cell(e, 'deletion_auc')} | {cell(e, 'baseline_deletion_auc')} | "
            f"{cell(e, 'deletion_gap')} | {e['deletion_beats_random']}/{e['images']} | "
            f"{cell(e, 'insertion_auc')} | {cell(e, 'baseline_insertion_auc')} | "
            f"{cell(e, 'insertion_gap')} | {e['seconds']:.1f} | {e['sweep_passes']} | "
            f"{e['faithfulness_passes']} |")
    return "\n".join(lines) + "\n"


def _settings(fields: dict[str, Any]) -> str:
    s = {"sampler": "conditional", "window": DEFAULT_WINDOW, "stride": DEFAULT_STRIDE,
         "samples": DEFAULT_SAMPLES, **fields}
    extra = f", drilldown {s['drilldown']}" if "drilldown" in s else ""
    S = 1 if s["sampler"] in DETERMINISTIC_SAMPLERS else s["samples"]
    return f"{s['sampler']} k{s['window']} s{s['stride']} S{S}{extra}"


def write(out: Path, rows: list[dict[str, Any]], table: list[dict[str, Any]],
          configs: dict[str, dict[str, Any]], meta: dict[str, Any]) -> tuple[Path, Path]:
    """``evaluation.md`` and ``evaluation.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "evaluation.md", out / "evaluation.json"
    md.write_text(markdown(table, configs))
    js.write_text(json.dumps({"meta": meta, "table": table, "rows": rows}, indent=1))
    return md, js
