"""The module picture of docs/architecture.md, drawn from the real imports.

Usage: python scripts/measure/import_graph.py [--out docs/architecture.svg]

Builds the import graph with grimp (import-linter's engine, so it sees what the CI
contracts see, function-level imports included), groups the modules into the parts the
architecture names, and draws which part imports which (edge labels: module-level import
count) with Graphviz ``dot``. Writes the DOT text beside the SVG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: (group, label, colour, module prefixes); the first match wins
GROUPS = [
    ("cli", "pda.cli, pda.library, pda.tools\n(composition roots)", "#eeeeee",
     ("pda.cli", "pda.library", "pda.tools", "pda.__main__")),
    ("api", "service/\nthe API: validate, queue, serve files", "#d8ecd8", ("service",)),
    ("proc", "worker/\nthe RQ worker process", "#d8d8f0", ("worker",)),
    ("jobs", "pda.jobs\na job's life: record, store,\nqueue, attempts", "#f4e6c8", ("pda.jobs",)),
    ("engine", "pda.engine (with drilldown/)\npure tensor code: the one Run", "#f2d0d0",
     ("pda.engine",)),
    ("models", "pda.models\nloaded networks", "#f2d0d0", ("pda.models",)),
    ("light", "pda (light)\nsettings, params, grid, runtime,\ncatalog, images, render,\n"
     "document, problems, errors",
     "#fff8d8", ("pda",)),
    ("torch", "torch, torchvision,\nopenvino, onnxruntime", "#ffffff",
     ("torch", "torchvision", "openvino", "onnxruntime")),
    ("redis", "redis, rq", "#ffffff", ("redis", "rq")),
    ("http", "fastapi, starlette,\nuvicorn", "#ffffff", ("fastapi", "starlette", "uvicorn")),
]


def group_of(module: str) -> str | None:
    for name, _, _, prefixes in GROUPS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    return None


def edges() -> Counter:
    graph = grimp.build_graph("pda", "service", "worker", include_external_packages=True)
    count: Counter = Counter()
    for module in graph.modules:
        src = group_of(module)
        if src is None or src in ("torch", "redis", "http"):
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            dst = group_of(imported)
            if dst is not None and dst != src:
                count[src, dst] += 1
    return count


def dot(count: Counter) -> str:
    lines = ["digraph architecture {", '  rankdir=TB; nodesep=0.4; ranksep=0.55;',
             '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=11];',
             '  edge [fontname=Helvetica, fontsize=9, color="#555555"];']
    for name, label, colour, _ in GROUPS:
        shape = ', shape=ellipse, style=dashed' if colour == "#ffffff" else ""
        lines.append(f'  {name} [label="{label}", fillcolor="{colour}"{shape}];')
    lines += ['  {rank=same; api; proc; cli}', '  {rank=same; jobs; engine; models}',
              '  {rank=same; torch; redis; http}']
    for (src, dst), n in sorted(count.items()):
        lines.append(f'  {src} -> {dst} [label="{n}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "architecture.svg"))
    out = Path(ap.parse_args().out)
    text = dot(edges())
    out.with_suffix(".dot").write_text(text)
    subprocess.run(["dot", "-Tsvg", "-o", str(out)], input=text.encode(), check=True)
    print(out)


if __name__ == "__main__":
    main()
