"""The process's cache of sampler factors: fitted and factorised statistics, bounded in
bytes (least recently used first out), and optionally kept on disk.

A conditional sampler's factors (per border geometry, per patch size) depend only on the
statistics' content, the window and the padding, so a second job of the same window
reuses them. Before this cache they were kept per statistics object without a bound:
every new window size added its fits to a worker for good. The composition roots (CLI,
library, worker) apply the deployment's ``PDA_SAMPLER_CACHE_BYTES`` and disk folder
(``PDA_BACKEND_CACHE_DIR``/sampler, ``PDA_SAMPLER_DISK_BYTES``) with :func:`configure`;
the engine never reads settings. A value larger than the bound is computed and returned,
not kept. On disk, factors are torch files named by a hash of their key (the key holds
the statistics' content hash), written atomically, so any worker process on the machine
reads what another computed; the folder is pruned to its bound, oldest read first out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

#: the bound until configure() sets the deployment's (pda.settings.Settings default too)
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_DISK_BYTES = 2 * 1024 * 1024 * 1024

log = logging.getLogger("pda")

T = TypeVar("T")


def nbytes(value: Any) -> int:
    """Bytes held by a cached value: arrays, tensors, objects with ``nbytes``, tuples."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    size = getattr(value, "nbytes", None)
    if size is None:
        raise TypeError(f"cannot size a {type(value).__name__} for the sampler cache")
    return int(size)


class ByteCache:
    """A thread-safe LRU mapping bounded by the bytes of its values."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value``, dropping the least recently used until the bound holds; a value
        over the bound on its own is not kept."""
        size = nbytes(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            self._evict()

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = int(max_bytes)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._items:
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size


class DiskStore:
    """Factors (tensors, arrays, or tuples of them) as files in one folder, bounded in
    bytes. Never fails a job: an unreadable or unwritable file is a miss."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory, self.max_bytes = Path(directory), int(max_bytes)

    def _path(self, key: Hashable) -> Path:
        return self.directory / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:40]}.pt"

    def load(self, key: Hashable) -> Any | None:
        path = self._path(key)
        try:
            doc = torch.load(path, weights_only=True)
            os.utime(path)  # read recently: pruned last
        except FileNotFoundError:
            return None
        except Exception as exc:  # a torn or foreign file is a miss, and goes
            log.warning("sampler cache file %s is unreadable (%s); recomputing", path, exc)
            path.unlink(missing_ok=True)
            return None
        items = [t.numpy() if doc["numpy"] else t for t in doc["items"]]
        return tuple(items) if doc["tuple"] else items[0]

    def save(self, key: Hashable, value: Any) -> None:
        items = list(value) if isinstance(value, tuple) else [value]
        as_numpy = isinstance(items[0], np.ndarray)
        doc = {"numpy": as_numpy, "tuple": isinstance(value, tuple),
               "items": [torch.from_numpy(np.ascontiguousarray(v)) if as_numpy else v
                         for v in items]}
        path = self._path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            torch.save(doc, tmp)
            os.replace(tmp, path)  # atomic: readers see the whole file or none
            self._prune()
        except OSError as exc:
            log.warning("sampler cache %s is not writable (%s); going on without it",
                        self.directory, exc)
            tmp.unlink(missing_ok=True)

    def _prune(self) -> None:
        files = []
        for f in self.directory.glob("*.pt"):
            try:
                st = f.stat()
            except FileNotFoundError:  # another process pruned it
                continue
            files.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in files)
        for _, size, f in sorted(files):  # least recently read first
            if total <= self.max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size


#: the process's one cache (workers hold one model set and serve many jobs)
CACHE = ByteCache()
#: the disk behind it, when configured
_disk: DiskStore | None = None


def configure(max_bytes: int, directory: Path | str | None = None,
              disk_bytes: int = DEFAULT_DISK_BYTES) -> None:
    """Apply the deployment's bounds (``PDA_SAMPLER_CACHE_BYTES``; evicts at once) and
    disk folder (None: memory only)."""
    global _disk
    CACHE.resize(max_bytes)
    _disk = DiskStore(Path(directory), disk_bytes) if directory is not None else None


def cached(key: Hashable, make: Callable[[], T], *, disk: bool = False) -> T:
    """``CACHE[key]``; on a miss read from disk (``disk``: the value is tensors or arrays)
    or made by ``make()``, and kept within the bound.

    Computed outside the lock: two threads missing the same key both compute it, which
    costs time once and never blocks other keys behind a long factorisation."""
    value = CACHE.get(key)
    if value is not None:
        return value
    store = _disk if disk else None
    value = store.load(key) if store is not None else None
    if value is None:
        value = make()
        if store is not None:
            store.save(key, value)
    CACHE.put(key, value)
    return value
