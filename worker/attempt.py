"""One attempt, owned by the worker: a whole job, a chunk or a merge runs inside one.

An :class:`Attempt` carries what every attempt needs and nothing else: it beats while it
makes progress (:mod:`worker.liveness`), receives the engine run's progress
(:meth:`report`: throttled writes of the phase and the passes through its hold in
:mod:`pda.jobs.attempts`, which also tell it whether it was canceled, taken over or lost;
the warm-shutdown check; predictions answered between batches), and decides in one place
what its stop means (:meth:`stopped`). What differs by kind is the hold's business.

Stops: a cancel or an ended job stops quietly; an attempt taken over (its worker was taken
for dead) stops without writing; a lost record is never re-created; a warm shutdown gives
the attempt back at the front of its queue; a deterministic failure (a caller's mistake
found late, a model file that does not load, an out-of-memory) fails the job at once; any
other error is retried ``PDA_JOB_RETRIES`` times, then fails the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from pda.errors import JobFailedError, PDAError, WorkerOutOfMemoryError
from pda.eta import RateMeter
from pda.jobs.attempts import ENDED, LOST, TAKEN, Hold
from pda.jobs.store import is_transient
from pda.problems import job_problem
from pda.settings import Settings
from worker import interleave
from worker.liveness import Pulse, start_beat

log = logging.getLogger("pda.worker")

#: set by the worker's SIGTERM handler (and Ctrl-C): the running attempt gives itself
#: back at its next progress report and the process exits
shutdown_requested = threading.Event()
#: the attempt this process is running now (None when idle), for the worker's heartbeat
current: str | None = None
#: and the Attempt itself (the shutdown watchdog gives it back if it cannot stop itself)
_running: Attempt | None = None
#: Redis errors an attempt rides out (a restart, a failover) rather than failing the job
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
#: seconds between two progress writes (and cancel checks) of one attempt
REPORT_EVERY = 0.25


class Stop(Exception):
    """The attempt must stop; ``why`` is one of pda.jobs.attempts' reasons, or
    ``"shutdown"`` (a warm shutdown gives it back)."""

    def __init__(self, why: str, what: str) -> None:
        super().__init__(f"{what}: {why}")
        self.why = why


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Attempt:
    """Use as a context manager around the attempt's work; ``report`` is the engine run's
    progress sink (:class:`pda.engine.explain.Status`)."""

    def __init__(self, hold: Hold, settings: Settings) -> None:
        self.hold, self.settings = hold, settings
        self.pulse = Pulse()
        self.meter = RateMeter()  # this attempt's passes/s, for the job resource's ETA
        self._last = 0.0
        self._phase = ""
        self._stop_beat: threading.Event | None = None
        self.ended = False  # set once it has stopped (or was given back from outside)
        self._began = time.monotonic()
        self._prep: float | None = None  # seconds its set-up took, once it is past it

    def __enter__(self) -> Attempt:
        global current, _running
        s = self.settings
        self._stop_beat = start_beat(self.hold.beat, self.pulse, s.stale_job_seconds / 3,
                                     s.stall_seconds, self.hold.describe())
        current, _running = self.hold.member, self
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        global current, _running
        if self._stop_beat is not None:
            self._stop_beat.set()
        current, _running = None, None
        rate = self.meter.rate()
        if exc_type is None and rate:  # what the next jobs' ETAs assume for this model
            self._measured(rate=rate)

    def _measured(self, **what: float) -> None:
        try:
            self.hold.store.record_rates(self.hold.record.model, **what)
        except REDIS_DOWN:  # an estimate: never worth failing an attempt for
            pass

    # -- progress ------------------------------------------------------------------------
    def report(self, status: Any) -> None:
        """After every preparation step and forward batch: the one place where an attempt
        reports progress and learns whether to stop (raises :class:`Stop`)."""
        self.pulse.touch()  # the heartbeat beats while this is called (liveness)
        now = time.monotonic()
        rate = self.meter.add(status.done, now) if status.phase != "preparing" else None
        changed = status.phase != self._phase
        if self._prep is None and status.phase != "preparing":
            self._prep = now - self._began
            self._measured(prep=self._prep)
        if changed or now - self._last > REPORT_EVERY or status.done == status.total:
            self._last, self._phase = now, status.phase
            self.write(phase=status.phase, phase_done=status.phase_done,
                       phase_total=status.phase_total, progress_done=status.done,
                       progress_total=status.total,
                       **({"progress_rate": rate} if rate else {}))
        if shutdown_requested.is_set():
            raise Stop("shutdown", self.hold.describe())
        interleave.between_batches(self.settings)  # callers of /v1/predictions wait no longer

    def phase(self, name: str, done: int = 0, total: int = 0, **fields: Any) -> None:
        """A phase the worker itself runs (loading, writing): written at once, with
        ``fields``."""
        self.pulse.touch()
        self._phase = name
        self.write(phase=name, phase_done=done, phase_total=total, **fields)
        if shutdown_requested.is_set() and name != "writing":
            raise Stop("shutdown", self.hold.describe())

    def write(self, **progress: Any) -> None:
        try:
            why = self.hold.write(progress)
        except REDIS_DOWN:  # keep computing; the result is written once Redis is back
            return
        if why is not None:
            raise Stop(why, self.hold.describe())

    # -- the end ---------------------------------------------------------------------------
    def stopped(self, exc: BaseException) -> str:
        """What an attempt that did not finish leaves behind, by why it stopped."""
        if self.ended:
            return "requeued"  # the shutdown watchdog gave it back already
        self.ended = True
        outcome = self._outcome(exc)
        persist(self.hold.close, outcome)
        return outcome

    def _outcome(self, exc: BaseException) -> str:
        hold, what = self.hold, self.hold.describe()
        if isinstance(exc, Stop):
            if exc.why == ENDED:
                log.info("%s: the job ended meanwhile (canceled); stopped", what)
                return "canceled"
            if exc.why == TAKEN:
                log.warning("%s was rerun elsewhere; dropping this one", what)
                return "superseded"
            if exc.why == LOST:
                log.warning("%s: its record is gone from Redis (data lost: a restart without "
                            "persistence, or a flush); stopped, nothing written", what)
                return LOST
            persist(hold.give_back, "shutdown")
            log.warning("%s given back by a warm shutdown", what)
            return "requeued"
        problem = deterministic_problem(exc)
        if problem is not None:
            log.warning("%s failed: %s", what, problem["detail"])
            persist(hold.fail, problem)
            return "failed"
        log.error("%s crashed", what, exc_info=exc)
        if hold.attempt <= self.settings.job_retries:
            persist(hold.give_back, "crashed")
            return "retrying"
        persist(hold.fail, job_problem(JobFailedError(
            f"{hold.work} failed after {hold.attempt} attempts: {one_line(exc)}")))
        return "failed"


def give_back_current() -> bool:
    """Give the running attempt back to the queue from outside its thread (the shutdown
    watchdog); False when none runs or it has already stopped."""
    running = _running
    if running is None or running.ended:
        return False
    running.ended = True
    return bool(running.hold.give_back("shutdown"))


def deterministic_problem(exc: BaseException) -> dict[str, Any] | None:
    """The problem document of a failure that would fail again on a rerun (so it is not
    retried): a caller's mistake found late (:class:`PDAError`: a broken model file, an
    image that does not decode), or memory the job needs and the worker does not have."""
    if isinstance(exc, PDAError):
        return job_problem(exc)
    if isinstance(exc, MemoryError):
        return job_problem(WorkerOutOfMemoryError(
            f"the job needs more memory than this worker has ({one_line(exc)}); use a "
            "smaller window, another sampler or fewer samples, or a larger worker"))
    return None


def persist(fn: Callable[..., Any], *args: Any, patience: float = 30.0, **kwargs: Any) -> Any:
    """``fn(...)``, retried while Redis is briefly away (a restart) or full (results
    expiring make room), so that a computed result or a requeue is not thrown away; past
    ``patience`` the error propagates and the reaper reruns the job once its heartbeat is
    stale."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return fn(*args, **kwargs)
        except (*REDIS_DOWN, redis.exceptions.ResponseError) as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line; TorchScript puts the model's own error last."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = (lines[-1] if lines else "").removeprefix("builtins.")
    if not text.startswith(type(exc).__name__) and ": " not in text[:40]:
        text = f"{type(exc).__name__}: {text}"
    return text[:300]
