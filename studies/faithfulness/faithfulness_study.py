"""Run ``pda evaluate``'s measurement on chosen photos and keep the maps.

Calls :func:`pda.tools.evaluate.run` with the same protocol as ``pda evaluate`` and writes
evaluation.md/json (the same tables) and maps.npz (every configuration's map of every
photo, keys ``CONFIG/IMAGE``) to --out, for looking at the maps behind a number:

    nice python studies/faithfulness/faithfulness_study.py pda/data/evaluation/tiger.jpg \\
        --configs default,occlusion --families removal --out /tmp/fstudy

(The study script behind the older tables of notebook.md, which re-scored maps
under the grey fill, is in the history at commit 57abafd.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pda.engine.inputs import preprocess
from pda.engine.stats import get_stats
from pda.images import open_image
from pda.models.registry import get_model
from pda.settings import get_settings
from pda.tools import evaluate as ev
from pda.tools.metrics import Protocol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--configs", default="default,occlusion")
    ap.add_argument("--families", default="removal,correlation")
    ap.add_argument("--fills", default="blur,road")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default="fstudy")
    a = ap.parse_args()
    s = get_settings()
    model = get_model(s.default_model, torch.device("cpu"), s)
    images = [(Path(f).name, preprocess(open_image(f, max_pixels=s.max_image_pixels,
                                                   fit_to=model.input_size),
                                        model.input_size, "squash")[0]) for f in a.images]
    configs = ev.pick_configs(a.configs.split(","))
    maps: dict[str, np.ndarray] = {}
    rows = ev.run(model, images, configs, get_stats(s.sampler_stats), backend=a.backend,
                  protocol=Protocol(fills=tuple(a.fills.split(","))),
                  families=ev.pick_families(a.families.split(",")), log=print,
                  on_map=lambda c, i, m: maps.__setitem__(f"{c}/{i}", m.numpy()))
    out = Path(a.out)
    table, pairs = ev.summarize(rows), ev.paired(rows, next(iter(configs)))
    settings = {c: ev.settings_text(f) for c, f in configs.items()}
    ev.write(out, rows, table, settings, {"images": a.images}, pairs)
    np.savez_compressed(out / "maps.npz", **maps)
    print(ev.markdown(table, settings, pairs))


if __name__ == "__main__":
    main()
