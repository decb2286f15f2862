"""How the ``pda`` command and its tools end on a caller's mistake: one line on stderr and
exit status 2, never a traceback (the CLI and every tool share it, so a tool never imports
the CLI that dispatches to it)."""

from __future__ import annotations

import sys

EXIT_USAGE = 2


def fail(message: str) -> int:
    """Print ``pda: error: message`` on stderr; the exit status to return."""
    print(f"pda: error: {message}", file=sys.stderr)
    return EXIT_USAGE
