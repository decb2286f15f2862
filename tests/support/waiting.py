"""Waiting on events: poll a condition until it holds or a deadline passes.

The one polling helper of the tests: a test waits for something it can observe (a status,
a log line, a later beat), never for a fixed time taken as evidence."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, predicate: Callable[[], T], timeout: float = 120,
               every: float = 0.1, detail: Callable[[], object] | None = None) -> T:
    """``predicate()``'s first truthy value, polled every ``every`` seconds.

    Once ``timeout`` seconds have passed without one: AssertionError naming ``what``, the
    predicate's last value and ``detail()`` (a job as last read, a log's tail). An
    exception the predicate raises (an assertion that a process still runs) ends the wait
    at once. The predicate is always asked at least once, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(min(every, max(0.0, deadline - time.monotonic())))
    extra = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                         f"(last value: {value!r:.500}){extra}")
