"""The API process's cache of rendered overlay PNGs.

An overlay is rendered from the stored files (document, grids, photo) on request: three
Redis reads, two decodes and a resample for every GET. The viewer and clients ask for the
same few overlays again and again, so each API process keeps the PNGs it rendered in a
bounded LRU (:data:`MAX_BYTES` in all). It is only ever consulted after the job record is
read and found to have results (canceled, deleted, expired or another caller's jobs never
reach it), and a DELETE through this process drops the job's entries at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

#: bytes of PNG one API process keeps at most
MAX_BYTES = 64 * 1024 * 1024


class OverlayCache:
    """A thread-safe LRU of PNG bytes, bounded by their total size. Keys are tuples
    whose first item is the job id (:meth:`drop` removes a job's)."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Hashable, ...], bytes] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[Hashable, ...]) -> bytes | None:
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
            return png

    def put(self, key: tuple[Hashable, ...], png: bytes) -> None:
        """Keep ``png`` under ``key``, evicting the least recently used to stay within
        :attr:`max_bytes` (a PNG larger than the whole budget is not kept)."""
        if len(png) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._total -= len(old)
            while self._items and self._total + len(png) > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._total -= len(evicted)
            self._items[key] = png
            self._total += len(png)

    def drop(self, job_id: str) -> None:
        """Forget every overlay of ``job_id``."""
        with self._lock:
            for key in [k for k in self._items if k[0] == job_id]:
                self._total -= len(self._items.pop(key))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0


#: this process's cache
CACHE = OverlayCache()
