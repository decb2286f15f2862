"""``pda evaluate``'s tables: per-configuration means with 95% percentile-bootstrap
intervals over the images, paired differences against a reference configuration
(bootstrap over images of the per-image difference), and the files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

BOOTSTRAP = 2000
#: metric -> +1 when higher is better, -1 when lower is; per fill F the removal keys are
#: F_morf, F_lerf, F_morf_gap, F_lerf_gap, F_srg; 0: neither (0 is ideal: the signed
#: Spearman of the top class's map and a random other class's is -1 for a mirror image,
#: +1 for the same map; it is shown without a verdict, the |map| Spearman carries it)
REMOVAL = {"morf": -1, "lerf": +1, "morf_gap": -1, "lerf_gap": +1, "srg": +1}
OTHER = {"correlation": +1, "pf_auc": -1, "rp_aopc": +1, "rand_spearman": -1,
         "rand_spearman_abs": -1, "rand_ssim": -1,
         "logit_spearman": 0, "logit_spearman_abs": -1}


def metric_keys(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The metrics the rows carry, with their direction, in table order."""
    present = set().union(*(r.keys() for r in rows)) if rows else set()
    fills = sorted({k[:-5] for k in present if k.endswith("_morf")},
                   key=lambda f: ("blur", "road", "grey").index(f) if f in (
                       "blur", "road", "grey") else 9)
    keys = {f"{f}_{k}": d for f in fills for k, d in REMOVAL.items()}
    keys.update({k: d for k, d in OTHER.items() if k in present})
    return keys


def mean_ci(values: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval (a point interval for one value); NaN
    values (an SSIM on a map too small for its window) are left out."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), float(v.mean()), float(v.mean())
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (BOOTSTRAP, len(v)))].mean(1)  # (BOOTSTRAP,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


def _cell(values: list[float]) -> dict[str, Any]:
    m, lo, hi = mean_ci(values)
    return {"mean": _r(m), "ci95": [_r(lo), _r(hi)]}


def _r(v: float) -> float | None:
    return None if v != v else round(v, 4)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration (first-seen order): images, each metric's mean and 95% CI, how
    many images beat random per fill (MoRF below, LeRF above, both), mean seconds and
    passes per image."""
    keys = metric_keys(rows)
    fills = [k[:-5] for k in keys if k.endswith("_morf") and not k.endswith("gap")]
    table = []
    for cname in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == cname]
        entry: dict[str, Any] = {"config": cname, "images": len(mine)}
        for k in keys:
            entry[k] = _cell([r[k] for r in mine])
        for f in fills:
            entry[f"{f}_beats_random"] = {
                "morf": sum(r[f"{f}_morf_gap"] < 0 for r in mine),
                "lerf": sum(r[f"{f}_lerf_gap"] > 0 for r in mine),
                "both": sum(r[f"{f}_morf_gap"] < 0 and r[f"{f}_lerf_gap"] > 0 for r in mine)}
        for k in ("seconds", "sweep_passes", "metric_passes", "metric_seconds"):
            entry[k] = round(float(np.mean([r[k] for r in mine])), 2)
        table.append(entry)
    return table


def paired(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per other configuration and metric: mean of (config - reference) over the images
    both have, its 95% bootstrap interval, and ``better``: +1 when the interval lies on
    the metric's good side of 0, -1 on its bad side, 0 when it contains 0."""
    keys = metric_keys(rows)
    ref = {r["image"]: r for r in rows if r["config"] == reference}
    out = []
    for cname in dict.fromkeys(r["config"] for r in rows):
        if cname == reference:
            continue
        mine = [r for r in rows if r["config"] == cname and r["image"] in ref]
        entry: dict[str, Any] = {"config": cname, "reference": reference,
                                 "images": len(mine)}
        for k, d in keys.items():
            m, lo, hi = mean_ci([r[k] - ref[r["image"]][k] for r in mine])
            # one image gives no interval: no verdict
            better = 0 if len(mine) < 2 or m != m or lo <= 0 <= hi else (
                d if lo > 0 else -d)
            entry[k] = {"mean": _r(m), "ci95": [_r(lo), _r(hi)], "better": better}
        out.append(entry)
    return out


ARROW = {+1: "↑", -1: "↓", 0: "(0 ideal)"}
NAMES = {"morf": "MoRF", "lerf": "LeRF", "morf_gap": "MoRF − random",
         "lerf_gap": "LeRF − random", "srg": "SRG (LeRF − MoRF)",
         "correlation": "faithfulness corr.", "pf_auc": "pixel flipping AUC (black)",
         "rp_aopc": "region pert. AOPC (black)", "rand_spearman": "rand. Spearman",
         "rand_spearman_abs": "rand. Spearman |map|", "rand_ssim": "rand. SSIM",
         "logit_spearman": "other class Spearman",
         "logit_spearman_abs": "other class Spearman |map|"}


def _label(k: str) -> str:
    fill, _, rest = k.partition("_")
    if rest in REMOVAL:
        return f"{fill} {NAMES[rest]}"
    return NAMES.get(k, k)


def _fmt(c: dict[str, Any]) -> str:
    if c["mean"] is None:
        return "–"
    return f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"


def markdown(table: list[dict[str, Any]], settings: dict[str, str],
             pairs: list[dict[str, Any]] | None = None) -> str:
    """The tables as GitHub markdown: metrics (one column per metric, gaps and SRG for
    removal), beats-random counts and cost; then the paired differences."""
    if not table:
        return ""
    keys = [k for k in table[0] if isinstance(table[0][k], dict) and "mean" in table[0][k]
            and not k.endswith(("_morf", "_lerf"))]
    fills = [k[:-len("_beats_random")] for k in table[0] if k.endswith("_beats_random")]
    head = (["config", "settings", "n"] + [f"{_label(k)} {ARROW[_dir(k)]}" for k in keys]
            + [f"{f}: beats random (MoRF & LeRF)" for f in fills]
            + ["s / image", "map passes", "metric passes"])
    head = [_esc(h) for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in table:
        n = e["images"]
        cells = ([e["config"], _esc(settings.get(e["config"], "")), str(n)]
                 + [_fmt(e[k]) for k in keys]
                 + [f"{e[f + '_beats_random']['both']}/{n}" for f in fills]
                 + [f"{e['seconds']:.1f}", f"{e['sweep_passes']:.0f}",
                    f"{e['metric_passes']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if pairs:
        ref = pairs[0]["reference"]
        head = ["config − " + ref, "n"] + [_esc(_label(k)) for k in keys]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in pairs:
            lines.append("| " + " | ".join(
                [p["config"], str(p["images"])]
                + [_fmt(p[k]) + {1: " **better**", -1: " **worse**", 0: ""}[p[k]["better"]]
                   for k in keys]) + " |")
        text += "\nPaired differences (per image, then bootstrap over images):\n\n"
        text += "\n".join(lines) + "\n"
    return text


def _esc(text: str) -> str:
    """A table cell's text: a "|" (``|map|``, gradient's ``max|dp/dx|``) would end the
    cell, so it is escaped."""
    return text.replace("|", "\\|")


def _dir(k: str) -> int:
    rest = k.partition("_")[2]
    return REMOVAL[rest] if rest in REMOVAL else OTHER[k]


def write(out: Path, rows: list[dict[str, Any]], table: list[dict[str, Any]],
          settings: dict[str, str], meta: dict[str, Any],
          pairs: list[dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """``evaluation.md`` and ``evaluation.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "evaluation.md", out / "evaluation.json"
    md.write_text(markdown(table, settings, pairs))
    js.write_text(json.dumps({"meta": meta, "table": table, "paired": pairs or [],
                              "rows": rows}, indent=1, default=float))
    return md, js
