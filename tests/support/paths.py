"""Where things are: the repository, the example photo, the test artifacts folder."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAT = ROOT / "examples" / "chelsea.png"
ARTIFACTS = ROOT / "test-artifacts"
#: the sampler's fitting set (pda/engine/stats.py), shipped in the package
REFERENCE_PHOTOS = ROOT / "pda" / "data" / "reference"
