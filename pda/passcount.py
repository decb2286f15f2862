"""Forward passes of the faithfulness scores, counted without torch.

The API counts a job's whole total at submit (:func:`pda.params.plan`) and the worker
then runs exactly these passes (:mod:`pda.engine.faithfulness`): both use these functions,
so ``progress.total`` is known before the job starts and never changes while it runs.
"""

from __future__ import annotations

import math

from .defaults import FAITHFULNESS_ORDERS, FAITHFULNESS_STEP
from .errors import InvalidParameterError


def step_counts(n_pixels: int, step: float) -> list[int]:
    """Pixels changed at each curve point: 0, m, 2m, ..., N with m = ceil(step * N)."""
    if not 0.0 < step <= 1.0:
        raise InvalidParameterError(f"faithfulness step {step} must lie in (0, 1]")
    m = max(1, math.ceil(step * n_pixels - 1e-9))
    return list(range(0, n_pixels, m)) + [n_pixels]


def passes_needed(n_pixels: int, targets: int, step: float = FAITHFULNESS_STEP,
                  orders: int = FAITHFULNESS_ORDERS) -> int:
    """Forward passes of one scoring: the two shared end points, then the interior points
    of a deletion and an insertion curve for every target and every random order."""
    P = len(step_counts(n_pixels, step))
    return 2 + 2 * (P - 2) * (targets + orders)
