"""The ``pda`` command: explain, serve, worker, fit-sampler, models, bench.

Every caller mistake ends in one line on stderr and exit status 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pda.tools.usage import fail as _fail


class _UsageError(Exception):
    """A bad command line, reported as one line (not argparse's usage block)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{message} (`{self.prog} --help` lists the options)")


def _fill(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fill {text!r}: expected R,G,B numbers") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--fill {text!r}: expected three values R,G,B")
    return values  # type: ignore[return-value]


class _Progress:
    """A progress bar on stderr: forward passes done / total, rate and ETA."""

    def __init__(self, enabled: bool, desc: str = "sweep") -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="pass", desc=self.desc, file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)
        if total != self.bar.total:  # a batch's total, corrected as its items end
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def note(self, line: str) -> None:
        """A line on stderr above the bar (the bar is redrawn below it)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_explain(args: argparse.Namespace) -> int:
    from pda.errors import InvalidParameterError
    from pda.library import explain, explain_params
    from pda.tools.explain_many import is_batch

    given = {f: getattr(args, f) for f in _param_fields() if getattr(args, f) is not None}
    try:  # the same check explain() makes, first, so that a bad flag is named as one
        explain_params(given, args.preset)
    except InvalidParameterError as exc:  # named as the flag: --window: ...
        errors = exc.extra.get("errors")
        message = errors[0]["message"] if errors else str(exc)
        flag = f"--{exc.field.replace('_', '-')}: " if exc.field else ""
        return _fail(f"{flag}{message}")
    backend = args.backend
    if args.compile:
        print("pda: --compile is deprecated and will be removed: use --backend compile",
              file=sys.stderr)
        backend = "compile"
    if is_batch(args.image):  # many images, or a folder: one bar, a folder per image
        return _explain_batch(args, given, backend)
    bar = _Progress(not args.quiet)
    try:  # the library's explanation (pda.library): one code path, one set of defaults
        result = explain(args.image[0], args.model, preset=args.preset, backend=backend,
                         device=args.device, precision=args.precision,
                         batch_size=args.batch_size,
                         sampler_stats=args.sampler_stats, progress=bar,
                         announce=lambda line: print(line, file=sys.stderr), **given)
    finally:
        bar.close()
    expl, doc = result.explanation, result.document
    out = result.save(args.out, scale=args.scale)
    if approx := doc.get("approximation"):
        err = approx["error"]
        print(f"pda: drill-down used {approx['forward_passes']} of "
              f"{approx['exact_forward_passes']} passes ({approx['saving']:.1f}x fewer); "
              f"estimated SSIM {err['ssim']:.3f} (95% CI {err['ssim_ci95'][0]:.3f}.."
              f"{err['ssim_ci95'][1]:.3f}), max |diff| >= {err['max_abs_diff']:.3g}",
              file=sys.stderr)
    if warning := doc["coverage"].get("warning"):
        print(f"pda: warning: {warning}", file=sys.stderr)
    for e in doc["explanations"]:
        if f := e.get("faithfulness"):
            b = f["baseline"]
            print(f"pda: faithfulness of {e['label']}: deletion AUC {f['deletion_auc']:.3f} "
                  f"(random blocks {b['deletion_auc']:.3f}, lower is better), insertion AUC "
                  f"{f['insertion_auc']:.3f} (random {b['insertion_auc']:.3f}, higher is "
                  f"better)", file=sys.stderr)
    if expl.faithfulness_passes:
        print(f"pda: the faithfulness scores took {expl.faithfulness_passes} of the passes "
              "(--no-faithfulness skips them)", file=sys.stderr)
    top = expl.prediction[0]
    rate = expl.forward_passes / max(expl.seconds, 1e-9)
    print(f"pda: top-1 {top['label']} (p={top['probability']:.3f}); "
          f"{expl.forward_passes} passes in {expl.seconds:.1f} s ({rate:.0f}/s); wrote {out}/",
          file=sys.stderr)
    return 0


def _explain_batch(args: argparse.Namespace, given: dict[str, Any], backend: str | None
                   ) -> int:
    """``pda explain`` of many images (pda.tools.explain_many)."""
    from pda.library import explain_params
    from pda.settings import get_settings
    from pda.tools.explain_many import gather, run, stderr_line

    gather(args.image)  # a missing file is a mistake on the line, before the model loads
    params = explain_params(given, args.preset).model_dump(mode="json")
    settings = get_settings()
    summary_params = {"model": args.model or settings.default_model, "preset": args.preset,
                      **params}
    options = dict(model=args.model, preset=args.preset, backend=backend, device=args.device,
                   precision=args.precision, batch_size=args.batch_size,
                   sampler_stats=args.sampler_stats, **given)
    bar = _Progress(not args.quiet, desc="images")
    try:
        return run(args.image, Path(args.out), scale=args.scale, options=options,
                   summary_params=summary_params, progress=bar, say=stderr_line)
    finally:
        bar.close()


def cmd_models(args: argparse.Namespace) -> int:
    from pda.catalog import list_models, model_info
    from pda.settings import get_settings

    settings = get_settings()
    if args.name:
        info = model_info(args.name, settings)
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        _print_model(info)
        return 0
    models = list_models(settings)
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for m in models:
        size = "x".join(str(s) for s in m["input_size"]) if m.get("input_size") else "?"
        flag = "*" if m.get("default") else " "
        state = "available" if m["available"] else "no weights"
        print(f"{flag} {m['name']:<20} {size:<9} {state:<11} {m['description']}")
    print("(* = default; `pda models NAME` lists a model's layers)")
    return 0


def _print_model(info: dict[str, Any]) -> None:
    size = "x".join(str(s) for s in info["input_size"]) if info.get("input_size") else "?"
    print(f"{info['name']}: {info['description']}")
    print(f"  input {size}, {info.get('num_classes') or '?'} classes, "
          f"{'available' if info.get('available') else 'not available'}")
    if info.get("install"):
        print(f"  to install: {info['install']}")
    layers = info.get("layers")
    if not layers:
        print("  layers: none known (explain output or logits)" if layers == [] else
              "  layers: not known until a worker has loaded this model file")
        return
    print(f"  {len(layers)} layers for --layer (channels are the targets of a hidden layer):")
    print(f"  {'name':<34} {'type':<22} {'channels':>8}  output")
    for layer in layers:
        out = "x".join(str(s) for s in layer["output_size"])
        print(f"  {layer['name']:<34} {layer['type']:<22} {layer['channels']:>8}  {out}")


def cmd_fit_sampler(args: argparse.Namespace) -> int:
    from pda.engine.stats import DEFAULT_PATCH_SIZES, fit_stats

    start = time.perf_counter()
    stats = fit_stats(args.directory)
    sizes = args.patch_sizes or list(DEFAULT_PATCH_SIZES)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats.save(out, patch_sizes=sizes)
    print(f"pda: fitted {len(stats.images)} images (patch sizes {sizes}) in "
          f"{time.perf_counter() - start:.1f} s; wrote {out}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from pda.settings import get_settings
    from service.main import serve

    if args.data_dir:  # the same name means the same thing everywhere: PDA_DATA_DIR
        os.environ["PDA_DATA_DIR"] = args.data_dir
        get_settings.cache_clear()
    return serve(host=args.host, port=args.port)


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.runner import run_worker

    return run_worker(burst=args.burst, name=args.name)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pda.tools.evaluate_cli import main as evaluate_main

    return evaluate_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from pda.tools.bench import main as bench_main

    return bench_main(args)


def _default(field: str) -> str:
    """``default X`` from the one parameter model (pda.params.ExplainParams), so that the
    help cannot drift from what an explanation does when a flag is left out."""
    from pda.params import ExplainParams

    value = getattr(ExplainParams(), field)  # what an explanation uses when none is given
    if isinstance(value, bool):
        value = "on" if value else "off"
    return f"default {value}"


#: flag spellings the parameter model cannot say itself (metavars, the fill's parser)
_FLAG_EXTRAS: dict[str, dict[str, Any]] = {
    "fill": {"type": _fill, "metavar": "R,G,B"},
    "drilldown": {"metavar": "FRACTION"},
    "coarse_stride": {"metavar": "N"},
}


def _param_fields() -> list[str]:
    from pda.params import ExplainParams

    return list(ExplainParams.model_fields)


def _param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`pda.params.ExplainParams` field, generated from the model:
    its type (Literal -> choices, bool -> --x/--no-x), its description and its default,
    so a new parameter is a flag at once and no help text can drift from it. Every
    flag defaults to None: only what is given on the line overrides the defaults (and a
    preset)."""
    import typing

    from pda.params import ExplainParams

    for name, info in ExplainParams.model_fields.items():
        # the description says what None means (drilldown off, the reference mean, ...)
        kw: dict[str, Any] = {"help": info.description if info.default is None
                              else f"{info.description} ({_default(name)})"}
        ann = info.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) is typing.Literal:
            kw["choices"] = list(typing.get_args(ann))
        elif ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif ann in (int, float):
            kw["type"] = ann
        elif args and args[0] in (int, float):  # optional numbers
            kw["type"] = args[0]
        kw.update(_FLAG_EXTRAS.get(name, {}))
        parser.add_argument(f"--{name.replace('_', '-')}", default=None, **kw)


def build_parser() -> argparse.ArgumentParser:
    from pda.defaults import BACKENDS, PRECISION_CHOICES, PRESET_HELP, PRESETS

    p = _Parser(prog="pda", description="Prediction Difference Analysis")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("explain", help="explain a classifier's decision on an image, or on "
                       "many (files or folders: a folder per image, summary.json and "
                       "contact-sheet.png in --out)")
    e.add_argument("image", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image file (PNG, JPEG, WebP, BMP, TIFF, GIF); several, or a folder "
                   "of them, explain each with the model loaded once")
    e.add_argument("--model", help="built-in name (default efficientnet_lite0) or NAME.pt2/.pt")
    _param_flags(e)
    e.add_argument("--preset", choices=list(PRESETS), help=PRESET_HELP)
    e.add_argument("--device", help="auto (default), cpu or cuda")
    e.add_argument("--batch-size", type=int, help="forward batch size (default: automatic)")
    e.add_argument("--compile", action="store_true",
                   help="deprecated: use --backend compile")
    e.add_argument("--backend", choices=BACKENDS,
                   help="execution backend (default PDA_BACKEND, auto: the fastest exact one "
                   "for the device)")
    e.add_argument("--precision", choices=PRECISION_CHOICES,
                   help="forward-pass precision (default PDA_PRECISION, fp32; auto = bf16 "
                        "where the device runs it natively and its measured error allows)")
    e.add_argument("--sampler-stats", help="statistics file from `pda fit-sampler`")
    e.add_argument("--scale", choices=["shared", "own"], default="shared",
                   help="overlay colour scale: shared by all targets (default) or each its own")
    e.add_argument("--out", default="pda-out", help="output folder (default ./pda-out); for "
                   "many images, items already in it are skipped (a rerun resumes)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_explain)

    s = sub.add_parser("serve", help="run the HTTP API (with no PDA_REDIS_URL: with a Redis "
                       "and a worker of its own)")
    s.add_argument("--host", default=None, help="bind address (default PDA_HOST, 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port (default PDA_PORT, 8000)")
    s.add_argument("--data-dir", default=None, help="embedded mode: where its Redis keeps "
                   "the jobs and results (default PDA_DATA_DIR, else ~/.local/share/pda)")
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="run an RQ worker (needs PDA_REDIS_URL)")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.add_argument("--name", help="worker name (default: host and pid)")
    w.set_defaults(func=cmd_worker)

    f = sub.add_parser("fit-sampler", help="fit sampler statistics from a folder of images")
    f.add_argument("directory")
    f.add_argument("--out", required=True, help="output .npz file")
    f.add_argument("--patch-sizes", type=lambda t: [int(v) for v in t.split(",")],
                   help="patch sides l = k + 2*padding to fit ahead (default 14,20)")
    f.set_defaults(func=cmd_fit_sampler)

    m = sub.add_parser("models", help="list the models this installation can serve, or one "
                       "model's layers")
    m.add_argument("name", nargs="?", help="a model: print its input, classes and layers")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    v = sub.add_parser("evaluate", help="faithfulness and cost of several configurations "
                       "over a folder of images")
    from pda.tools.evaluate_cli import add_arguments as evaluate_arguments

    evaluate_arguments(v)
    v.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="measure raw model and sweep throughput")
    b.add_argument("--model", default="efficientnet_lite0")
    b.add_argument("--random-weights", action="store_true", help="no weight files needed")
    b.add_argument("--device", default="auto")
    b.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    b.add_argument("--json", action="store_true")
    b.add_argument("--rounds", type=int, default=5,
                   help="interleaved raw/sweep rounds; each side reports its best")
    b.add_argument("--batch-sizes", help="batch sizes to try, e.g. 1,4,16 (default by device)")
    b.add_argument("--samplers", help="samplers to sweep (default conditional,marginal,constant;"
                                      " with --backends: conditional, one table per sampler)")
    b.add_argument("--precisions",
                   help="also sweep under these precisions beside fp32, e.g. bf16,fp16: under "
                        "autocast on the raw model, and on the auto backend with the ratio "
                        "to fp32 (default: bf16,fp16 on a GPU; bf16 on a CPU whose OpenVINO "
                        "runs it natively; else none)")
    b.add_argument("--image", help="photo to explain (default pda/data/sample/chelsea.png, "
                   "examples/chelsea.png cropped to 224 x 224)")
    b.add_argument("--no-captum", action="store_true", help="skip the Captum comparison")
    b.add_argument("--compile", action="store_true", help="also time torch.compile (raw)")
    b.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--backends", metavar="LIST",
                   help="compare execution backends side by side instead: all, or a list "
                   "like torch,compile,openvino,onnxruntime (with --precisions bf16,...)")
    b.add_argument("--profile", action="store_true",
                   help="also profile one sweep per sampler: sampling, batch, forward, sums")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from pda.errors import PDAError

    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:  # one line and exit 2, as for every other bad input
        return _fail(str(exc))
    try:
        return args.func(args)
    except PDAError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for SIGINT
        print(f"pda: interrupted ({args.command or 'pda'} stopped; nothing more written)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
