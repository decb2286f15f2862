"""Issue 31's measurements on the evaluation photos, one map per configuration shared by
all of them:

1. ``pda evaluate``'s families for the default (conditional k32 s8, 2 samples),
   ``samples=1`` and ``fast`` (occlusion): removal under blur, the faithfulness
   correlation, and the constant-fill most-relevant-first families (pixel flipping and
   region perturbation, black fill); rows in ``pda evaluate``'s format, tables by
   ``pda.tools.evaluate_report`` (evaluation.md / evaluation.json in --out);
2. on the first --scores-photos photos, the faithfulness scores' protocol: do fewer random
   orders or a coarser step give the same scores within their own seed-to-seed noise?
   The default's top-3 maps at seeds 0 and 1; the product's deletion/insertion curves
   (pda.engine.faithfulness: blur fill, relevance order, 16 px block orders) at step
   0.02 with 4 random orders at seed 0 (seeds (0, r); the product uses r = 0..2) and 3
   at seed 1; step 0.04 is read off the 0.02 curves (ceil(0.04 N) = 2 ceil(0.02 N) at
   224 x 224: every other point);
3. on the same photos, the agreement (Pearson, Spearman) of the 1-sample map with the
   2-sample map, against two seeds of the 2-sample map.

Each photo's results are written to --out/study.json as soon as it is done (a cut run
keeps them). From the repository root:

    PYTHONPATH=$PWD python studies/faithfulness/issue31_study.py \
        pda/data/evaluation/*.jpg --scores-photos 8 --out /tmp/issue31
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ORDERS0, ORDERS1 = 4, 3


def aucs(vals: np.ndarray, counts: list[int], T: int) -> dict[str, Any]:
    """AUCs from curves (T + R, 2, P, T): the maps' (T, 2) and the random orders' (R, T, 2)
    (mode 0 deletion, 1 insertion)."""
    from pda.engine.faithfulness import auc

    maps = [[auc(vals[t, m, :, t], counts) for m in (0, 1)] for t in range(T)]
    rnd = [[[auc(vals[T + r, m, :, t], counts) for m in (0, 1)] for t in range(T)]
           for r in range(vals.shape[0] - T)]
    return {"maps": maps, "random": rnd}


def every_other(vals: np.ndarray, counts: list[int], n: int, step: float
                ) -> tuple[np.ndarray, list[int]]:
    """The curves at twice the step, read off the curves at ``step`` (exact when the
    coarser step's pixel count is twice the finer one's)."""
    from pda.grid import step_counts

    coarse = step_counts(n, 2 * step)
    idx = [counts.index(c) for c in coarse]  # raises when not a subset
    return vals[:, :, idx], coarse


def explain_maps(model: Any, x: torch.Tensor, stats: Any, **fields: Any
                 ) -> tuple[torch.Tensor, list[int], float, int]:
    """The (T, H, W) maps of ``fields`` over the service defaults (no scores), their
    classes, wall seconds and sweep passes."""
    from pda.engine.explain import explain
    from pda.params import ExplainParams
    from pda.runtime import Runtime

    t0 = time.perf_counter()
    e = explain(model, x, ExplainParams(**{**fields, "faithfulness": False}), stats,
                runtime=Runtime(batch_size=None, backend="auto"))
    return (torch.from_numpy(e.relevance), list(e.targets), time.perf_counter() - t0,
            e.forward_passes)


def evaluate_rows(model: Any, name: str, x: torch.Tensor, maps: dict[str, Any],
                  protocol: Any) -> list[dict[str, Any]]:
    """``pda evaluate``'s rows (pda.tools.evaluate.run's format) for the top class's map
    of each configuration in ``maps`` (config -> (maps, targets, seconds, passes)): the
    removal family under ``protocol.fills``, the correlation, pixel flipping and region
    perturbation."""
    from pda.engine.backends import build_readout
    from pda.engine.device import auto_batch_size
    from pda.tools.metrics import ImageScorer

    C, H, W = x.shape
    bs = auto_batch_size(x.device, (H, W), model)
    t = next(iter(maps.values()))[1][0]
    p = float(torch.softmax(model(x[None]).float(), 1)[0, t])
    score = build_readout(model, "output", [t], backend="auto", batch_size=bs)
    scorer = ImageScorer(score, x, protocol, batch_size=bs)
    rows = []
    for cname, (rel, targets, seconds, passes) in maps.items():
        assert targets[0] == t, (cname, targets, t)
        row: dict[str, Any] = {"config": cname, "image": name, "target": t,
                               "label": model.labels[t], "probability": p,
                               "seconds": seconds, "sweep_passes": passes}
        t1, used = time.perf_counter(), 0
        scores, n = scorer.removal(rel[0])
        row.update(scores)
        used += n
        row["correlation"], n = scorer.correlation(rel[0])
        used += n
        row["pf_auc"], n = scorer.pixel_flipping(rel[0])
        used += n
        row["rp_aopc"], n = scorer.region_perturbation(rel[0])
        used += n
        row["metric_passes"], row["metric_seconds"] = used, time.perf_counter() - t1
        rows.append(row)
    return rows


def score_runs(model: Any, x: torch.Tensor, s2_0: torch.Tensor, s2_1: torch.Tensor,
               s1_0: torch.Tensor, targets: list[int]) -> dict[str, Any]:
    """The product's deletion/insertion AUCs of the default's top-3 maps at seeds 0 and 1
    (step 0.02; 0.04 read off it at seed 0) against random orders, and the maps'
    agreement."""
    from pda.engine.backends import build_readout
    from pda.engine.device import auto_batch_size
    from pda.engine.faithfulness import block_order, curves, fill_canvas, relevance_order
    from pda.grid import step_counts
    from pda.tools.metrics import pearson, spearman

    C, H, W = x.shape
    N = H * W
    T = len(targets)
    bs = auto_batch_size(x.device, (H, W), model)
    prob = build_readout(model, "output", targets, backend="auto", batch_size=bs)
    canvas = fill_canvas(x, "blur")
    out: dict[str, Any] = {"targets": targets}
    for name, rel, seed, R in (("s2_seed0", s2_0, 0, ORDERS0), ("s2_seed1", s2_1, 1, ORDERS1)):
        orders = [relevance_order(rel[t]) for t in range(T)]
        orders += [block_order(H, W, 16, np.random.default_rng([seed, r])) for r in range(R)]
        counts = step_counts(N, 0.02)
        vals, _ = curves(prob, x, canvas, orders, counts, batch_size=bs)
        vals = vals.astype(np.float64)
        out[f"{name}_step0.02"] = aucs(vals, counts, T)
        if seed == 0:
            v2, c2 = every_other(vals, counts, N, 0.02)
            out[f"{name}_step0.04"] = aucs(v2, c2, T)
    a, b, c = (m.double().flatten(1) for m in (s2_0, s2_1, s1_0))

    def agree(u: torch.Tensor, v: torch.Tensor) -> list[list[float]]:
        return [[pearson(u[t].numpy(), v[t].numpy()), spearman(u[t].numpy(), v[t].numpy())]
                for t in range(T)]
    out["agreement"] = {"s2_seed0_vs_s2_seed1": agree(a, b), "s1_seed0_vs_s2_seed0": agree(c, a),
                        "s1_seed0_vs_s2_seed1": agree(c, b)}
    return out


def summarise(photos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per score (deletion, insertion, their random baselines, the gaps map - random):
    the mean |seed 0 - seed 1| of today's protocol (step 0.02, 3 orders) against the mean
    |candidate - today| at seed 0, over photos and targets; and the gap's seed-to-seed
    spread and verdict flips with 1, 2 or 3 random orders."""
    def base(d: dict[str, Any], R: int, r0: int = 0) -> np.ndarray:
        return np.asarray(d["random"])[r0:r0 + R].mean(0)  # (T, 2)

    rows: dict[str, list[Any]] = {}
    for p in photos.values():
        today0, today1 = p["s2_seed0_step0.02"], p["s2_seed1_step0.02"]
        m0, m1 = np.asarray(today0["maps"]), np.asarray(today1["maps"])  # (T, 2)
        b0, b1 = base(today0, 3), base(today1, 3)
        rows.setdefault("seed", []).append(np.stack([m0 - m1, b0 - b1, (m0 - b0) - (m1 - b1)]))
        for step in ("0.04",):
            cand = p[f"s2_seed0_step{step}"]
            mc, bc = np.asarray(cand["maps"]), base(cand, 3)
            rows.setdefault(f"step{step}", []).append(
                np.stack([mc - m0, bc - b0, (mc - bc) - (m0 - b0)]))
        for R in (1, 2, 3):  # seed-to-seed with R orders: orders 0..R-1 of each seed
            g0, g1 = m0 - base(today0, R), m1 - base(today1, R)
            rows.setdefault(f"orders{R}_gap", []).append(g0 - g1)
            flips = ((g0[:, 0] < 0) & (g0[:, 1] > 0)) != ((g1[:, 0] < 0) & (g1[:, 1] > 0))
            rows.setdefault(f"orders{R}_flips", []).append(flips)
            # the same seed-0 maps, R orders against 4: the baseline's own error
            rows.setdefault(f"orders{R}_vs4", []).append(base(today0, R) - base(today0, 4))
        rnd = np.asarray(today0["random"])  # (4, T, 2)
        rows.setdefault("order_sd", []).append(rnd.std(0, ddof=1))
    names = ["map", "random", "gap"]
    out: dict[str, Any] = {"photos": len(photos)}
    for k in ("seed", "step0.04"):
        a = np.abs(np.concatenate(rows[k], axis=1))  # (3, photos*T, 2)
        out[k] = {n: {"deletion": round(float(a[i, :, 0].mean()), 4),
                      "insertion": round(float(a[i, :, 1].mean()), 4)}
                  for i, n in enumerate(names)}
    for R in (1, 2, 3):
        g = np.abs(np.concatenate(rows[f"orders{R}_gap"]))
        v = np.abs(np.concatenate(rows[f"orders{R}_vs4"]))
        out[f"orders{R}"] = {
            "gap_seed_to_seed": {"deletion": round(float(g[:, 0].mean()), 4),
                                 "insertion": round(float(g[:, 1].mean()), 4)},
            "random_vs_4_orders": {"deletion": round(float(v[:, 0].mean()), 4),
                                   "insertion": round(float(v[:, 1].mean()), 4)},
            "beats_random_verdict_flips": int(np.concatenate(rows[f"orders{R}_flips"]).sum()),
            "maps": int(np.concatenate(rows[f"orders{R}_flips"]).size)}
    sd = np.concatenate(rows["order_sd"])
    out["one_order_sd"] = {"deletion": round(float(sd[:, 0].mean()), 4),
                           "insertion": round(float(sd[:, 1].mean()), 4)}
    agree = {k: np.asarray([p["agreement"][k] for p in photos.values()]).reshape(-1, 2)
             for k in next(iter(photos.values()))["agreement"]}
    out["agreement"] = {k: {"pearson": round(float(v[:, 0].mean()), 4),
                            "spearman": round(float(v[:, 1].mean()), 4),
                            "pearson_top1": round(float(v[::3, 0].mean()), 4)}
                        for k, v in agree.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--scores-photos", type=int, default=8)
    ap.add_argument("--out", default="issue31")
    a = ap.parse_args()
    from pda.engine.inputs import model_input
    from pda.engine.stats import get_stats
    from pda.models.registry import get_model
    from pda.settings import get_settings
    from pda.tools import evaluate as ev
    from pda.tools.metrics import Protocol

    s = get_settings()
    model = get_model(s.default_model, torch.device("cpu"), s)
    stats = get_stats(s.sampler_stats)
    protocol = Protocol(fills=("blur",))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "study.json"
    done = json.loads(path.read_text()) if path.exists() else {"rows": [], "scores": {}}
    configs = {"samples2": {"samples": 2}, "samples1": {"samples": 1},
               "occlusion": {"sampler": "constant"}}
    for i, f in enumerate(sorted(a.images)):
        name = Path(f).name
        if any(r["image"] == name for r in done["rows"]):
            continue
        t0 = time.perf_counter()
        x = model_input(f, model.input_size, "squash", max_pixels=s.max_image_pixels).x
        maps = {"samples2": explain_maps(model, x, stats, samples=2, seed=0, target="top3"),
                "samples1": explain_maps(model, x, stats, samples=1, seed=0, target="top3"),
                "occlusion": explain_maps(model, x, stats, sampler="constant", seed=0,
                                          target="top1")}
        done["rows"] += evaluate_rows(model, name, x, maps, protocol)
        if i < a.scores_photos:
            s2_1 = explain_maps(model, x, stats, samples=2, seed=1, target="top3")
            done["scores"][name] = score_runs(model, x, maps["samples2"][0], s2_1[0],
                                              maps["samples1"][0], maps["samples2"][1])
            done["scores_summary"] = summarise(done["scores"])
        path.write_text(json.dumps(done, indent=1, default=float))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = done["rows"]
    table, pairs = ev.summarize(rows), ev.paired(rows, "samples2")
    text = {c: ev.settings_text(fl) for c, fl in configs.items()}
    meta = {"model": model.name, "images": sorted({r["image"] for r in rows}),
            "protocol": vars(protocol) | {"fills": protocol.fills},
            "families": ["removal", "correlation", "pixel-flipping", "region-perturbation"],
            "command": "python studies/faithfulness/issue31_study.py " + " ".join(
                sys.argv[1:])}
    ev.write(out, rows, table, text, meta, pairs)
    print(ev.markdown(table, text, pairs))
    if done["scores"]:
        print(json.dumps(done["scores_summary"], indent=1))


if __name__ == "__main__":
    main()
