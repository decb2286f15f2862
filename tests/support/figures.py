"""Measured figures kept for the report (test-artifacts/*.json, docs/reliability.md)."""

from __future__ import annotations

import json
from pathlib import Path

from .paths import ARTIFACTS

FAULTS = ARTIFACTS / "faults.json"


def record_figures(artifact: Path, name: str, figures: dict[str, float], digits: int) -> None:
    """Keep a test's measured figures for the report, merged across tests in ``artifact``
    (test-artifacts/), and print them."""
    artifact.parent.mkdir(exist_ok=True)
    data = json.loads(artifact.read_text()) if artifact.exists() else {}
    data[name] = {k: round(v, digits) for k, v in figures.items()}
    artifact.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n{name}: {data[name]}")


def record(name: str, **figures: float) -> None:
    """Keep a fault's recovery figures for the report (merged across tests)."""
    record_figures(FAULTS, name, figures, digits=2)
