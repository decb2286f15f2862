"""Passes/s of a job's two phases in one run: the sweep and the faithfulness scores.

    PYTHONPATH=$PWD python scripts/measure/phase_rates.py [--stride 16] [--backend auto]

The default model on examples/chelsea.png with the default parameters (``--stride``
shortens the sweep only). Each phase's rate is measured from its own progress reports,
first to last, so set-up (prediction, graph conversion, the sampler's factors) counts in
neither; the scores' rate the engine records itself (``runtime.faithfulness``) is shown
beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from pda.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()

    from pda.engine.device import auto_batch_size
    from pda.engine.explain import explain
    from pda.engine.inputs import preprocess
    from pda.engine.stats import get_stats
    from pda.images import open_image
    from pda.models.registry import get_model
    from pda.params import ExplainParams, plan
    from pda.settings import get_settings

    model = get_model(get_settings().default_model)
    x, _ = preprocess(open_image(ROOT / "examples/chelsea.png"), model.input_size,
                      ExplainParams().fit)
    params = ExplainParams(**({"stride": args.stride} if args.stride else {}))
    n = plan(params, model.input_size)
    sweep_total = n["sweep_passes"] - 1  # the engine's progress leaves out the image's pass
    batch = args.batch_size or auto_batch_size(x.device, model.input_size, model)
    seen: list[tuple[float, int]] = []
    started = time.perf_counter()
    expl = explain(model, x, params, get_stats(),
                   runtime=Runtime(batch_size=batch, backend=args.backend),
                   progress=lambda d, _t: seen.append((time.perf_counter(), d)))
    wall = time.perf_counter() - started

    def rate(points: list[tuple[float, int]]) -> float:
        (t0, d0), (t1, d1) = points[0], points[-1]
        return (d1 - d0) / (t1 - t0)

    sweep = [p for p in seen if p[1] <= sweep_total]
    scores = [p for p in seen if p[1] >= sweep_total]
    out = {
        "model": model.name, "params": {"window": params.window, "stride": params.stride,
                                        "samples": params.samples, "target": params.target},
        "batch": batch, "cpus": os.cpu_count(), "load": round(os.getloadavg()[0], 1),
        "runtime": expl.runtime, "passes": {"sweep": n["sweep_passes"],
                                            "scores": n["faithfulness_passes"]},
        "sweep_passes_per_second": round(rate(sweep), 1),
        "scores_passes_per_second": round(rate(scores), 1),
        "wall_seconds": round(wall, 1),
    }
    out["ratio"] = round(out["scores_passes_per_second"] / out["sweep_passes_per_second"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
