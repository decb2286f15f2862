"""Grid arithmetic, torch-free: how many windows a sweep has, what one costs, how a sweep
is cut into blocks. The engine (torch), the API's plan at submit and the chunk planner
(both without torch) import these, so a chunked map equals a one-process map and the
total the API promises is the total the worker runs.

Windows sit fully inside the image at rows 0, s, 2s, ... <= H - k (and likewise for
columns), the convention of Captum's ``Occlusion`` and of ``torch.nn.functional.fold``.
"""

from __future__ import annotations

from typing import Protocol

from .defaults import DETERMINISTIC_SAMPLERS
from .errors import InvalidParameterError

#: windows per block: randomness is drawn per block from a generator seeded by (seed,
#: block), and chunks hold whole blocks, so a map does not depend on how it is cut
BLOCK_WINDOWS = 64


class _HasDeterminism(Protocol):
    deterministic: bool


def check_window(height: int, width: int, window: int, stride: int) -> None:
    """Raise :class:`InvalidParameterError` unless the window/stride fit the image."""
    if window < 1:
        raise InvalidParameterError(f"window must be at least 1, got {window}", field="window")
    if window > height or window > width:
        raise InvalidParameterError(
            f"window {window} exceeds the image size {height}x{width} (the model's input)",
            field="window",
        )
    if stride < 1:
        raise InvalidParameterError(f"stride must be at least 1, got {stride}", field="stride")


def grid_shape(height: int, width: int, window: int, stride: int) -> tuple[int, int]:
    """Window positions along each axis; (0, 0) when the window does not fit."""
    if window > height or window > width:
        return 0, 0
    return (height - window) // stride + 1, (width - window) // stride + 1


def count_windows(height: int, width: int, window: int, stride: int) -> int:
    """Window positions of a sweep; 0 when the window does not fit."""
    gh, gw = grid_shape(height, width, window, stride)
    return gh * gw


def passes_per_window(sampler: str | _HasDeterminism, samples: int) -> int:
    """Forward passes one window costs: S samples, or one for a deterministic sampler
    (given by name, as the API has it, or as the engine's sampler object)."""
    deterministic = (sampler in DETERMINISTIC_SAMPLERS if isinstance(sampler, str)
                     else sampler.deterministic)
    return 1 if deterministic else samples
