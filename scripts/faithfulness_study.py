"""Why does deletion not beat random block orders at the default settings? (issue 15)

Runs :func:`pda.evaluate.run` (the code of ``pda evaluate``: same parameters, seed and
protocol) on a few photos, keeps every top-1 map, then re-scores the maps without new
sweeps to separate the issue's candidate causes:

- window size / context against resolution: ``constant`` (w16, plain occlusion), ``wide``
  (w32/s16) and ``default`` maps, scored alike;
- the metric's fill: every map scored with the grey fill (the issue's measurement) beside
  the blur fill of the evaluate rows;
- evidence shared with competing classes: the same deletion curves read as p(top-1), as
  p(top-2), and as the top-3 classes' summed probability;
- the samples' noise: ``default`` against ``samples16`` where those configurations ran.

Writes evaluation.md/json (the ``pda evaluate`` table), study.json and maps.npz to --out.

    nice python scripts/faithfulness_study.py examples/chelsea.png \\
        pda/data/reference/coffee.png --configs constant,wide,default --out study-out
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pda import evaluate as ev
from pda.engine.faithfulness import (
    auc,
    block_order,
    curves,
    fill_canvas,
    relevance_order,
    step_counts,
)
from pda.engine.inputs import preprocess
from pda.engine.stats import get_stats
from pda.images import open_image
from pda.models.registry import get_model
from pda.settings import get_settings

ORDERS = 3


def rescore(model, x, maps: dict[str, np.ndarray], classes: list[int], fill: str
            ) -> dict[str, dict[str, float]]:
    """Deletion/insertion AUCs of each map's order (and the mean of ORDERS random block
    orders) read as p(top-1), p(top-2) and p(top-1..3 summed)."""
    idx = torch.tensor(classes[:3])
    H, W = x.shape[1:]

    def probabilities(b: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(model(b).float(), 1)[:, idx]  # (B, 3)
        return torch.stack([p[:, 0], p[:, 1], p.sum(1)], 1)  # (B, 3)

    counts = step_counts(H * W, 0.02)
    names = list(maps)
    orders = [relevance_order(torch.from_numpy(maps[n])) for n in names]
    orders += [block_order(H, W, 16, np.random.default_rng([0, r])) for r in range(ORDERS)]
    vals, passes = curves(probabilities, x, fill_canvas(x, fill), orders, counts,
                          batch_size=16)  # (k + R, 2, P, 3)
    out: dict[str, dict[str, float]] = {"forward_passes": {"n": passes}}
    for j, name in enumerate(names + ["random"]):
        rows = vals[j:j + 1] if name != "random" else vals[len(names):]
        out[name] = {
            f"{curve}_{col}": float(np.mean([auc(r[m, :, c], counts) for r in rows]))
            for m, curve in enumerate(("deletion", "insertion"))
            for c, col in enumerate(("top1", "top2", "top3sum"))}
        dele = rows[:, 0, :, :].mean(0)  # (P, 3)
        out[name]["top2_peak_during_deletion"] = float(dele[:, 1].max())
        out[name]["top1_at_10pct_deleted"] = float(dele[5, 0])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--configs", default="constant,wide,default")
    p.add_argument("--out", default="study-out")
    args = p.parse_args()
    torch.manual_seed(0)
    settings = get_settings()
    model = get_model("efficientnet_lite0", torch.device("cpu"), settings)
    images = [(Path(f).name, preprocess(open_image(f, fit_to=model.input_size),
                                        model.input_size, "squash")[0]) for f in args.images]
    configs = ev.pick_configs(args.configs.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    maps: dict[str, np.ndarray] = {}
    classes: dict[str, list[int]] = {}

    def keep(cname: str, name: str, expl) -> None:
        maps[f"{name}|{cname}"] = expl.relevance[0]
        classes[name] = [q["class_index"] for q in expl.prediction[:3]]
        np.savez_compressed(out / "maps.npz", **maps)

    t0 = time.perf_counter()
    rows = ev.run(model, images, configs, get_stats(settings.sampler_stats), target="top1",
                  log=lambda m: print(m, file=sys.stderr, flush=True), on_explanation=keep)
    table = ev.summarize(rows)
    ev.write(out, rows, table, configs, {
        "model": model.name, "images": [n for n, _ in images], "target": "top1",
        "fit": "squash", "seed": 0, "command": " ".join(sys.argv)})
    print(ev.markdown(table, configs))
    study = {}
    for name, x in images:
        mine = {c: maps[f"{name}|{c}"] for c in configs}
        study[name] = {"classes": classes[name],
                       "grey": rescore(model, x, mine, classes[name], "grey")}
        print(name, json.dumps(study[name], indent=1), flush=True)
        (out / "study.json").write_text(json.dumps(study, indent=1))
    if "default" in configs and "samples16" in configs:
        for name, _ in images:
            a, b = maps[f"{name}|default"].ravel(), maps[f"{name}|samples16"].ravel()
            study[name]["default_vs_samples16_corr"] = float(np.corrcoef(a, b)[0, 1])
    (out / "study.json").write_text(json.dumps(study, indent=1))
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
