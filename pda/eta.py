"""Measured rates and the ETA they give (torch-free: the worker measures, the API answers).

A running job's ETA is its remaining passes (sweep, scores: every phase, counted in one
total at submit, :func:`pda.params.plan`) over the rate this attempt has measured since
its first progress report, so model loading, graph conversion and the sampler's set-up
do not count as slowness. A queued job's ETA is its whole total over the rate the
workers last measured for a whole job (set-up included), as the next one will run.
"""

from __future__ import annotations

import time
from collections import deque

#: the rate is measured over this many recent seconds (a busy machine's speed drifts)
RATE_WINDOW_SECONDS = 60.0


class RateMeter:
    """Passes per second of one attempt, over its last ``window`` seconds of progress."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, done: int, now: float | None = None) -> float | None:
        """Record ``done`` passes at ``now``; the rate so far (None until two reports)."""
        now = time.monotonic() if now is None else now
        self.samples.append((now, done))
        # keep one sample older than the window, so the span covers all of it
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        return self.rate()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        if t1 <= t0 or d1 <= d0:
            return None
        return (d1 - d0) / (t1 - t0)


def eta_seconds(remaining: int, rate: float | None, since_report: float = 0.0
                ) -> float | None:
    """Seconds for ``remaining`` passes at ``rate``, less the time already spent since
    the last report (the passes under way); None without a measured rate."""
    if rate is None or rate <= 0:
        return None
    return round(max(0.0, remaining / rate - max(0.0, since_report)), 1)
