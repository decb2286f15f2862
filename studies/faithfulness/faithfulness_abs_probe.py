"""Re-score the study's kept chelsea.png maps ordered by |relevance| (grey fill): does
deleting negative evidence early close the gap to random orders? (notebook.md, "Findings")

    nice python studies/faithfulness/faithfulness_abs_probe.py /tmp/fstudy   # the study's --out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pda.engine.faithfulness import auc, curves, fill_canvas, relevance_order, step_counts
from pda.engine.inputs import preprocess
from pda.images import open_image
from pda.models.registry import get_model
from pda.settings import get_settings

NAMES = ("default", "constant", "wide")
CLASSES = (285, 282, 281)  # Egyptian cat, tiger cat, tabby: chelsea.png's top-3


def main(study: Path) -> dict:
    m = get_model("efficientnet_lite0", torch.device("cpu"), get_settings())
    img = open_image("examples/chelsea.png", fit_to=m.input_size)
    x = preprocess(img, m.input_size, "squash")[0]
    z = np.load(study / "maps.npz")
    idx = torch.tensor(CLASSES)

    def probs(b: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(m(b).float(), 1)[:, idx]  # (B, 3)
        return torch.stack([p[:, 0], p[:, 1], p.sum(1)], 1)  # (B, 3)

    orders = [relevance_order(torch.from_numpy(np.abs(z[f"chelsea.png|{n}"]))) for n in NAMES]
    counts = step_counts(224 * 224, 0.02)
    with torch.no_grad():
        v, passes = curves(probs, x, fill_canvas(x, "grey"), orders, counts, batch_size=16)
    out: dict = {n: {"deletion_top1": auc(v[i, 0, :, 0], counts),
                     "deletion_top3sum": auc(v[i, 0, :, 2], counts),
                     "insertion_top1": auc(v[i, 1, :, 0], counts)}
                 for i, n in enumerate(NAMES)}
    out["passes"] = passes
    # where the default map's most negative 10% of pixels lie (median row and column)
    d = z["chelsea.png|default"]
    r, c = np.unravel_index(np.argsort(d.ravel())[: d.size // 10], d.shape)
    out["most_negative_10pct_rows_cols_median"] = [float(np.median(r)), float(np.median(c))]
    return out


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fstudy")
    result = main(folder)
    (folder / "abs_probe.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
