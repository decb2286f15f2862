"""Does a Gaussian fitted on the photo itself give more faithful maps? (notebook.md,
"Hypotheses: the Gaussian fit and clipping"; issue 21.)

The sampler-fit study (sampler_fit_study.py, beside this one) found that a fit on the photo's own
patches predicts hidden windows 16 % better than the shipped fit, without a classifier.
This script puts that fit through the classifier: for every evaluation photo it explains
the top-1 class twice with the default settings, once with the shipped statistics and
once with a per-photo copy whose Gaussian for the default patch (k + 2p = 36) is fitted on
10,000 random patches of that photo's model input, and scores both maps with
``pda evaluate``'s removal (blur, ROAD) and correlation families in the same run, so the
paired differences share the random baseline and the fill noise.

    python studies/faithfulness/own_fit_faithfulness.py [--images N] \
        [--out studies/faithfulness/results/faithfulness-own-fit.json]

It prints the table and paired differences in ``pda evaluate``'s format (own − shipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pda.defaults import DEFAULT_PADDING, DEFAULT_WINDOW
from pda.engine.inputs import preprocess
from pda.engine.stats import SamplerStats, fit_gaussian, get_stats
from pda.images import open_image
from pda.models.registry import get_model
from pda.settings import get_settings
from pda.tools import evaluate as ev
from pda.tools.metrics import Protocol

#: patches of the photo the own fit takes (the study's figure)
OWN_PATCHES = 10_000
FAMILIES = ("removal", "correlation")


def own_stats(shipped: SamplerStats, x: torch.Tensor, patch: int, seed: int) -> SamplerStats:
    """A copy of ``shipped`` (its reference images and mean, for anything else) whose
    Gaussian for ``patch`` x ``patch`` patches is fitted on the image ``x`` (3, H, W)."""
    image = (x.permute(1, 2, 0).cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    mine = SamplerStats(shipped.images, shipped.mean, source="own fit")
    mu, cov = fit_gaussian(image[None], patch, n_patches=OWN_PATCHES, seed=seed)
    mine.set_gaussian(patch, mu, cov)
    return mine


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, help="use at most this many photos")
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    ap.add_argument("--stride", type=int, help="default: the service's")
    ap.add_argument("--samples", type=int, help="default: the service's")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    t0 = time.time()
    settings = get_settings()
    model = get_model(settings.default_model, torch.device("cpu"), settings)
    shipped = get_stats(settings.sampler_stats)
    fields = {k: v for k, v in {"window": args.window, "stride": args.stride,
                                "samples": args.samples}.items() if v is not None}
    configs = {"shipped": fields, "own": fields}
    patch = args.window + 2 * DEFAULT_PADDING
    protocol = Protocol(seed=0)
    rows: list[dict] = []
    files = ev.list_images(ev.EVAL_DIR, args.images)
    for n, f in enumerate(files):
        img = open_image(str(f), fit_to=model.input_size)
        x = preprocess(img, model.input_size, "squash")[0]
        stats = {"shipped": shipped, "own": own_stats(shipped, x, patch, seed=n + 1)}
        for name in configs:
            rows += ev.run(model, [(f.name, x)], {name: fields}, stats[name],
                           families=FAMILIES, protocol=protocol)
        print(f"photo {n + 1}/{len(files)} {f.name}  elapsed {time.time() - t0:.0f}s",
              file=sys.stderr, flush=True)
    table = ev.summarize(rows)
    pairs = ev.paired(rows, "shipped")
    text = {"shipped": "conditional, shipped fit", "own": "conditional, fit on the photo"}
    print(ev.markdown(table, text, pairs))
    result = {"command": " ".join(["python studies/faithfulness/own_fit_faithfulness.py", *(argv or
                                   sys.argv[1:])]),
              "fields": fields, "patch": patch, "own_patches": OWN_PATCHES,
              "seconds": round(time.time() - t0, 1), "table": table, "paired": pairs,
              "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


if __name__ == "__main__":
    main()
