"""Build-time check of the worker image (docker/Dockerfile, stage ``build``).

The build fails unless a worker made from this image can do what it ships for:

1. ``pip check``: every dependency the installed distributions declare is installed, so a
   missing run-time import fails the build, not a job (``--allow-missing`` names what the
   image drops on purpose, such as triton in the CPU image);
2. the default model's weights are inside the image (nothing is downloaded at start);
3. the default model converts on OpenVINO, the CPU workers' backend, and its logits match
   eager torch. This is the step that catches an import the converter makes lazily (its
   PyTorch frontend imports ``packaging``), which the first two never exercise;
4. ``pda bench``'s default photo is in the installed package (pda/data/sample), so the
   bench runs in the image without ``--image``. Checked here, not by a ``python -c`` in
   the Dockerfile: that would run in /src and import the source tree, not the package.

Prints one line of what it found (torch build, OpenVINO version, conversion time).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def pip_problems(allow_missing: set[str]) -> list[str]:
    """``pip check`` lines, less ``X requires Y, which is not installed`` for Y allowed."""
    run = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                         text=True, check=False)
    lines = [ln for ln in run.stdout.splitlines() if ln.strip()]
    if run.returncode == 0:
        return []
    return [ln for ln in lines
            if not any(f" requires {name}, which is not installed" in ln.lower()
                       for name in allow_missing)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_worker.py", description=__doc__.split("\n")[0])
    parser.add_argument("--allow-missing", default="", metavar="NAMES",
                        help="comma-separated distributions the image leaves out on purpose")
    args = parser.parse_args(argv)
    allowed = {n.strip().lower() for n in args.allow_missing.split(",") if n.strip()}
    problems = pip_problems(allowed)
    if problems:
        print("worker image check: pip check failed:\n  " + "\n  ".join(problems))
        return 1

    import openvino
    import torch
    from PIL import Image

    from pda.catalog import list_models
    from pda.engine.backends import build_net
    from pda.models.registry import get_model
    from pda.settings import get_settings
    from pda.tools.bench import SAMPLE_IMAGE

    try:
        with Image.open(SAMPLE_IMAGE) as sample:
            sample.load()
    except OSError as exc:
        print(f"worker image check: pda bench's sample photo is not in the package: {exc}")
        return 1
    settings = get_settings()
    name = settings.default_model
    if not any(m["name"] == name and m["available"] for m in list_models(settings)):
        print(f"worker image check: the default model {name}'s weights are not in the image")
        return 1
    model = get_model(name, "cpu", settings)
    t = time.perf_counter()
    try:  # the worker's own path (worker.runner.warm_backend), but an error fails the build
        net = build_net(model, "output", backend="openvino", batch_size=2)
    except Exception as exc:  # noqa: BLE001 (any converter error fails the build, with why)
        print(f"worker image check: {name} does not convert on OpenVINO: "
              f"{type(exc).__name__}: {exc}")
        return 1
    seconds = time.perf_counter() - t
    x = torch.rand(2, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    err = float((net(x) - model(x).float()).abs().max())
    if net.runtime.backend != "openvino" or not err < 1e-3:
        print(f"worker image check: OpenVINO ran {net.runtime.backend}, max |logit "
              f"difference| to torch {err:.2g}")
        return 1
    print(f"worker image check: torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"openvino {openvino.__version__}, {name} converted in {seconds:.1f} s, "
          f"max |logit difference| to torch {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
