"""pda: Prediction Difference Analysis (Zintgraf et al., ICLR 2017) as an engine, a CLI and
a service.

This package is the shared library of both processes. Its top level (settings, parameters,
errors, model metadata, images, rendering, the job life cycle) imports no torch, so the
API process stays light; the torch side lives in :mod:`pda.engine` and :mod:`pda.models`,
which only workers and the CLI load. docs/architecture.md draws the picture.
"""

__version__ = "0.2.0"
