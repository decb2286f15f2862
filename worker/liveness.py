"""Liveness by progress: an attempt's heartbeat beats only while the attempt progresses.

Every attempt (a whole job, a chunk, a merge) has one heartbeat: its member's score in
the running index, refreshed by a thread of the worker (a forward batch of a big model can
outlast the stale limit, so progress writes alone would not do). That thread now also
watches the attempt's progress callback: when nothing has been reported for
``PDA_STALL_SECONDS`` the attempt is taken as stuck (a hung forward, a deadlock) and the
thread stops beating, so the reaper reruns it exactly as it reruns a dead worker's job
(no fifth heartbeat, and no wall-clock limit: a slow attempt that keeps progressing
beats for as long as it runs). If the stuck attempt wakes up later, its next progress
check finds a newer attempt and it stops without writing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("pda.worker")


class Pulse:
    """When the attempt last reported progress (monotonic clock, this process)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last


def beat_while_progressing(beat: Callable[[], None], pulse: Pulse, stop: threading.Event,
                           every: float, stall_seconds: float, what: str) -> None:
    """Call ``beat()`` every ``every`` seconds (at most 5) until ``stop`` is set, except
    while ``pulse`` has been idle for more than ``stall_seconds``."""
    stalled = False
    while not stop.wait(min(5.0, every)):
        if pulse.idle_for() > stall_seconds:
            if not stalled:
                log.warning("%s: no progress for %.0f s (PDA_STALL_SECONDS); its heartbeat "
                            "stops so that it is rerun", what, pulse.idle_for())
                stalled = True
            continue
        stalled = False
        try:
            beat()
        except Exception:  # Redis briefly away: the next beat will do
            pass


def start_beat(beat: Callable[[], None], pulse: Pulse, every: float, stall_seconds: float,
               what: str) -> threading.Event:
    """Start the beating thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=beat_while_progressing, daemon=True,
                     args=(beat, pulse, stop, every, stall_seconds, what)).start()
    return stop
