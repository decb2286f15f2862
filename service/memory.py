"""Giving memory back to the system after bursts of large decodes.

A decoded upload is tens to hundreds of MB in blocks that glibc's malloc serves from its
heap once its dynamic mmap threshold has grown (the first large free raises it to that
size), and a heap does not shrink while anything above the freed space lives: without
help the API keeps its burst-time size for good. :func:`configure` pins the threshold
(large blocks always come from mmap and go back on free) and caps malloc's arenas;
:func:`release_if_idle` trims what is left once no decode is running.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger("pda.api")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: allocations from this size on come from mmap and are returned to the system on free
MMAP_THRESHOLD = 1024 * 1024

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc or None


def configure() -> bool:
    """Pin glibc's mmap threshold and cap its arenas (no-op elsewhere); True if applied."""
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD) == 1
    ok &= libc.mallopt(M_ARENA_MAX, 4) == 1
    if not ok:
        log.warning("mallopt refused a setting: memory may stay high after bursts")
    return ok


def release_if_idle(slots: threading.BoundedSemaphore, total: int) -> None:
    """Trim malloc's free memory when this was the last decode running.

    Called inside the caller's slot, so ``total - 1`` free slots means no other decode
    holds memory that trimming would have to skip."""
    libc = _glibc()
    if libc is not None and slots._value == total - 1:  # noqa: SLF001 (a read, no API)
        libc.malloc_trim(0)
