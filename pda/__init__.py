"""pda: Prediction Difference Analysis (Zintgraf et al., ICLR 2017) as an engine, a CLI and
a service.

This package is the shared library of both processes. Its top level (settings, parameters,
errors, model metadata, images, rendering, the job life cycle) imports no torch, so the
API process stays light; the torch side lives in :mod:`pda.engine` and :mod:`pda.models`,
which only workers and the CLI load. docs/architecture.md draws the picture.

``pda.explain(image, model=..., **params)`` is the CLI's explanation as a function and
``pda.explain_many(images, ...)`` its many-image form (:mod:`pda.library`); they are
imported on first use, so ``import pda`` stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .library import Item, Result, explain, explain_many

from .version import __version__

__all__ = ["Item", "Result", "__version__", "explain", "explain_many"]


def __getattr__(name: str) -> Any:
    # lazily: the API process never loads torch
    if name in ("explain", "explain_many", "Result", "Item"):
        from . import library

        return getattr(library, name)
    raise AttributeError(f"module 'pda' has no attribute {name!r}")
