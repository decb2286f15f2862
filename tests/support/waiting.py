"""Waiting on events: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, predicate: Callable[[], T], timeout: float = 120,
               every: float = 0.1) -> T:
    """``predicate()``'s first truthy value, polled every ``every`` seconds; AssertionError
    naming ``what`` once ``timeout`` seconds have passed without one."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
