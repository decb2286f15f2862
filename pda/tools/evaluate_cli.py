"""``pda evaluate``'s command line: arguments, the up-front time estimate, progress on
stderr, the tables on stdout and in ``--out`` (the work is :mod:`pda.tools.evaluate`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .usage import fail

BACKENDS = ["auto", "torch", "compile", "openvino", "onnxruntime"]


def add_arguments(v: argparse.ArgumentParser) -> None:
    v.add_argument("directory", nargs="?",
                   help="folder of images (default: the shipped evaluation photos, "
                   "pda/data/evaluation)")
    v.add_argument("--model", help="built-in name or model file (default efficientnet_lite0)")
    v.add_argument("--configs", help="comma-separated configurations (default "
                   "default,occlusion,marginal,random; also window16, window48, samples1, "
                   "samples2, samples4, samples8, samples16, stride4, wide, fine, drilldown, "
                   "logits, gradient, occlusion-stride5 (occlusion at 1,522 passes, at or "
                   "above the 2-sample map's 1,251), occlusion-equal (stride 4: 2,402 passes, the "
                   "4-sample map's); "
                   "context and constant are older names of default and occlusion)")
    v.add_argument("--families", help="metric families (default removal,correlation,"
                   "pixel-flipping,region-perturbation,randomisation,random-logit; "
                   "pixel-flipping and region-perturbation set the most relevant pixels or "
                   "16 px regions to black (0 in pixel space); "
                   "randomisation explains every image twice; "
                   "random-logit compares the map with a random other class's, from the "
                   "same sweep)")
    v.add_argument("--fills", default="blur,road",
                   help="removal fills: blur, road (noisy linear imputation), grey, black "
                   "(default blur,road; the first also serves the correlation)")
    v.add_argument("--step", type=float, default=0.1,
                   help="fraction of pixels removed per curve point (default 0.1)")
    v.add_argument("--pf-step", type=float, default=0.05,
                   help="pixel flipping: fraction of pixels set to black per curve point "
                   "(default 0.05)")
    v.add_argument("--region", type=int, default=16,
                   help="region perturbation: patch side in pixels (default 16)")
    v.add_argument("--regions", type=int, default=100,
                   help="region perturbation: patches set to black, one per step (default 100)")
    v.add_argument("--reference", help="configuration the paired differences are taken "
                   "against (default: the first)")
    v.add_argument("--images", type=int, help="use at most this many images (sorted by name)")
    v.add_argument("--target", default="top1", help="scored class: top1 (default) or an index")
    v.add_argument("--fit", choices=["crop", "pad", "squash"], default="squash")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--device", help="auto (default), cpu or cuda")
    v.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="execution backend of every forward pass (default auto: the "
                   "fastest exact one for the device)")
    v.add_argument("--batch-size", type=int, help="forward batch size (default: automatic)")
    v.add_argument("--dry-run", action="store_true",
                   help="print the pass count and time estimate, then stop")
    v.add_argument("--out", default="pda-evaluate",
                   help="folder for evaluation.md and evaluation.json (default ./pda-evaluate)")


def _say(message: str) -> None:
    print(f"pda: {message}", file=sys.stderr, flush=True)


def measure_rate(model: Any, x: Any, backend: str, batch_size: int) -> float:
    """Forward passes per second of the scoring readout on this machine, now (the
    first call converts the graph and is not timed)."""
    from ..engine.backends import build_readout

    score = build_readout(model, "output", [0], backend=backend, batch_size=batch_size)
    batch = x[None].expand(batch_size, *x.shape).contiguous()
    score(batch)
    t, n = time.perf_counter(), 0
    while n < 2 or time.perf_counter() - t < 2.0:
        score(batch)
        n += 1
    return n * batch_size / (time.perf_counter() - t)


def main(args: argparse.Namespace) -> int:
    from ..engine.device import auto_batch_size, resolve_device
    from ..engine.inputs import model_input
    from ..engine.stats import get_stats
    from ..models.registry import get_model
    from ..settings import get_settings
    from . import evaluate as ev
    from .metrics import Protocol

    settings = get_settings()
    configs = ev.pick_configs(args.configs.split(",") if args.configs else None)
    families = ev.pick_families(args.families.split(",") if args.families else None)
    folder = Path(args.directory) if args.directory else ev.EVAL_DIR
    if not folder.is_dir():
        return fail(f"{folder} is not a folder")
    files = ev.list_images(folder, args.images)
    if not files:
        return fail(f"no images in {folder}")
    reference = args.reference or next(iter(configs))
    if reference not in configs:
        return fail(f"--reference {reference} is not among --configs")
    protocol = Protocol(fills=tuple(f for f in args.fills.split(",") if f), step=args.step,
                        pf_step=args.pf_step, region=args.region, regions=args.regions,
                        seed=args.seed)
    from .metrics import fractions, make_fill

    fractions(protocol.step)  # fail on a bad step before any work
    fractions(protocol.pf_step)
    if protocol.region < 1 or protocol.regions < 1:
        return fail("--region and --regions must be at least 1")
    device = resolve_device(args.device or settings.device)
    model = get_model(args.model or settings.default_model, device, settings)
    images = []
    for f in files:
        given = model_input(str(f), model.input_size, args.fit,
                            max_pixels=settings.max_image_pixels)
        images.append((f.name, given.x))
    for fill in protocol.fills:
        make_fill(fill, images[0][1])  # an unknown fill fails here
    H, W = images[0][1].shape[1:]
    total = ev.estimate(configs, len(images), H, W, protocol, families)
    bs = args.batch_size or auto_batch_size(device, (H, W), model)
    rate = measure_rate(model, images[0][1].to(device), args.backend, bs)
    _say(f"evaluating {len(configs)} configurations ({', '.join(configs)}) on "
         f"{len(images)} images of {folder} with {model.name}; families "
         f"{', '.join(families)}; fills {', '.join(protocol.fills)}")
    _say(f"about {total:,} forward passes at {rate:.0f} passes/s measured now: "
         f"~{total / rate / 60:.1f} min of forward passes"
         + (" plus ROAD's sparse solves (about 0.1-1 s per curve point)"
            if "road" in protocol.fills and "removal" in families else ""))
    if args.dry_run:
        return 0
    bar = ev.Progress(total, _say)
    rows = ev.run(model, images, configs, get_stats(settings.sampler_stats),
                  target=args.target, seed=args.seed, batch_size=args.batch_size,
                  backend=args.backend, protocol=protocol, families=families, log=_say,
                  progress=bar)
    table = ev.summarize(rows)
    pairs = ev.paired(rows, reference) if len(configs) > 1 else []
    text = {c: ev.settings_text(f) for c, f in configs.items()}
    meta = {"model": model.name, "directory": str(folder), "target": args.target,
            "fit": args.fit, "seed": args.seed, "images": [f.name for f in files],
            "backend": args.backend, "protocol": vars(protocol) | {"fills": protocol.fills},
            "families": families, "rate_passes_per_s": round(rate, 1),
            "seconds": round(time.perf_counter() - bar.start, 1),
            "command": " ".join(["pda evaluate", *sys.argv[2:]])}
    md, js = ev.write(Path(args.out), rows, table, text, meta, pairs)
    print(ev.markdown(table, text, pairs))
    _say(f"wrote {md} and {js}")
    return 0
