"""Measured decisions: where exact incremental inference beats the naive sweep.

``python -m pda.tools.bench_incremental --write`` measures both, per model, device type and
naive backend, and stores the result in ``pda/data/incremental.json``;
``incremental="auto"`` follows it and stays off wherever nothing was measured.

Torch-free itself, but only the torch side reads it (:mod:`pda.engine.explain`,
:mod:`pda.tools.bench_incremental`), so it lives beside the incremental engine it decides
for; importing it loads that package (torch).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

DECISIONS_FILE = Path(__file__).resolve().parents[2] / "data" / "incremental.json"
INCREMENTAL_MODES = ("auto", "on", "off")


@cache
def _table() -> dict[str, Any]:
    if not DECISIONS_FILE.exists():
        return {}
    return json.loads(DECISIONS_FILE.read_text()).get("decisions", {})


def use_incremental(mode: str, model: str, device: str, backend: str = "torch") -> bool:
    """Whether to sweep incrementally: ``on``/``off`` as asked; ``auto`` where the bench
    measured it faster for this model on this device type (cpu, cuda) and backend."""
    if mode not in INCREMENTAL_MODES:
        raise ValueError(f"incremental must be one of {', '.join(INCREMENTAL_MODES)}, "
                         f"got {mode!r}")
    if mode != "auto":
        return mode == "on"
    entry = _table().get(device, {}).get(backend, {}).get(model)
    return bool(entry and entry.get("faster"))
