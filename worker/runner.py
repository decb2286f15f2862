"""``pda worker``: an RQ worker that keeps its models loaded between jobs.

It is a :class:`rq.SimpleWorker`: jobs run in this process, so models loaded at start
stay loaded and CUDA is never initialised before a fork (there is no fork). SIGTERM
asks for a warm shutdown: the running sweep stops at the end of its current batch and
puts its job back at the front of the queue, then the process exits. Between jobs the
worker touches a heartbeat file (the liveness probe), requeues jobs whose worker died
(:func:`pda.jobs.lifecycle.reap_abandoned`) or whose queue message was lost
(:func:`pda.jobs.lifecycle.requeue_lost`), and enqueues the callbacks that are due
(:meth:`pda.jobs.deliveries.Deliveries.enqueue_due`). Readiness counts workers by their own
beat in ``pda:workers`` (:class:`pda.jobs.workers.WorkerRegistry`), never by RQ's worker
list. A second RQ worker in a thread of the same process makes the callbacks
(:func:`worker.deliveries.start_delivery_thread`), so a delivery never waits for a sweep,
nor holds one up.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from pda.engine.device import resolve_device
from pda.jobs import lifecycle
from pda.jobs.chunks import chunk_queue
from pda.jobs.deliveries import Deliveries
from pda.jobs.queue import connect, get_queue, predict_queue
from pda.jobs.store import JobStore
from pda.jobs.workers import WorkerRegistry
from pda.runtime import Runtime
from pda.settings import Settings, get_settings
from worker import attempt
from worker.announce import announce_builtins, announce_model
from worker.deliveries import start_delivery_thread

log = logging.getLogger("pda.worker")


class PDAWorker(SimpleWorker):
    """SimpleWorker whose SIGTERM also stops the running sweep at a batch boundary."""

    def request_stop(self, signum, frame):  # noqa: ANN001 (RQ's signature)
        attempt.shutdown_requested.set()
        super().request_stop(signum, frame)


class EmbeddedWorker(PDAWorker):
    """Runs in a thread of ``pda serve``: no signal handlers, timer-based timeouts.

    The one override of an RQ internal left (docs/architecture.md, "Job bookkeeping"):
    Python lets only the main thread install signal handlers, and RQ has no switch."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


#: set once this process has loaded its models (its heartbeat says "loading" until then)
preloaded = threading.Event()


def preload(settings: Settings, conn: redis.Redis | None = None) -> None:
    """Load the configured models and the sampler statistics before taking jobs, and tell
    the API (through Redis) what this worker can serve."""
    from pda.engine.stats import get_stats
    from pda.models.registry import get_model

    device = resolve_device(settings.device)
    get_stats(settings.sampler_stats)
    if conn is not None:
        try:
            announce_builtins(conn, settings)
        except redis.RedisError as exc:
            log.warning("could not publish the model catalogue: %s", exc)
    for name in settings.worker_model_list:
        t = time.perf_counter()
        model = get_model(name, device, settings)
        log.info("loaded %s on %s in %.1f s", name, device, time.perf_counter() - t)
        warm_backend(model, settings)
        if conn is not None:
            announce_model(conn, model)
    preloaded.set()


def warm_backend(model: Any, settings: Settings) -> None:
    """Convert (or read back from PDA_BACKEND_CACHE_DIR) the output-layer graph now, so the
    first job does not pay for it; a backend that fails here fails the jobs, not the start."""
    from pda.engine.backends import build_net
    from pda.engine.device import auto_batch_size

    t = time.perf_counter()
    rt = Runtime.from_settings(settings)  # what the jobs will run (worker.tasks)
    batch = rt.batch_size or auto_batch_size(model.device, model.input_size, model)
    try:
        net = build_net(model, "output", backend=rt.backend, precision=rt.precision,
                        batch_size=batch, cache_dir=rt.cache_dir)
    except Exception as exc:  # logged; each job then reports the same error itself
        log.warning("backend %s for %s: %s", rt.backend, model.name, exc)
        return
    log.info("backend %s (%s) ready for %s in %.1f s", net.runtime.backend,
             net.runtime.precision, model.name, time.perf_counter() - t)


def maintenance_loop(settings: Settings, stop: threading.Event, name: str) -> None:
    """Beat (Redis and the heartbeat file) and reap abandoned jobs until ``stop`` is set.

    This thread beats whether or not a job is running, so a worker busy on a two-hour
    job stays counted as alive, and a killed one stops beating at once."""
    store = JobStore(connect(settings), settings.result_ttl_seconds, settings.queue_name)
    registry = WorkerRegistry(store.r, settings.worker_fresh_seconds)
    outbox = Deliveries(store.r, settings)
    path = Path(settings.heartbeat_file)
    device = str(resolve_device(settings.device))
    started = time.time()
    try:
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            except OSError as exc:
                log.warning("cannot touch heartbeat file %s: %s", path, exc)
            try:
                registry.beat(name, worker_info(settings, device, started))
                lifecycle.reap_abandoned(settings, store)
                lifecycle.requeue_lost(settings, store)
                outbox.enqueue_due()  # callback retries, and the repair of lost ones
            except Exception as exc:  # Redis away: the worker loop reports it, keep beating
                log.warning("maintenance: %s", exc)
            if stop.wait(settings.heartbeat_interval_seconds):
                break
    finally:
        try:
            registry.leave(name)
        except Exception:  # Redis away: the beat simply ages out
            pass


def worker_info(settings: Settings, device: str, started: float) -> dict:
    """What a worker says about itself in each beat (shown by /readyz and the metrics)."""
    job = attempt.current
    state = "busy" if job else "idle" if preloaded.is_set() else "loading"
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": device,
            "state": state, "job": job, "started_at": started,
            "models": settings.worker_model_list}


def run_worker(burst: bool = False, name: str | None = None) -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.redis_url:
        print("pda: error: pda worker needs PDA_REDIS_URL (embedded mode runs its worker "
              "inside pda serve)", file=sys.stderr)
        return 2
    conn = connect(settings)
    try:
        conn.ping()
    except Exception as exc:
        print(f"pda: error: cannot reach Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    worker = PDAWorker(queues(settings, conn), connection=conn, name=name)
    beat = threading.Thread(target=maintenance_loop, args=(settings, stop, worker.name),
                            daemon=True)
    beat.start()  # alive (and "loading") from here on
    start_delivery_thread(settings, worker.name)
    preload(settings, conn)
    # SIGTERM during preload is covered by RQ's handler from here on
    signal.signal(signal.SIGTERM, worker.request_stop)
    try:
        worker.work(burst=burst, logging_level=settings.log_level.upper(),
                    with_scheduler=False)
    finally:
        stop.set()
        beat.join(timeout=5)  # says goodbye in the registry
    return 0


def queues(settings: Settings, conn: redis.Redis) -> list:
    """What a worker listens to, in priority order: predictions (short, a caller is
    waiting), then whole jobs, then chunks of split jobs: a new small job starts before
    the next chunk of a huge one (pda.jobs.chunks)."""
    return [predict_queue(settings, conn), get_queue(settings, conn),
            chunk_queue(settings, conn)]


def start_embedded_worker(settings: Settings) -> threading.Thread:
    """The in-process worker of embedded mode (``pda serve`` with no PDA_REDIS_URL)."""
    conn = connect(settings)

    def run() -> None:
        name = f"embedded-{os.getpid()}"
        stop = threading.Event()
        threading.Thread(target=maintenance_loop, args=(settings, stop, name),
                         daemon=True).start()
        start_delivery_thread(settings, name)
        preload(settings, conn)
        worker = EmbeddedWorker(queues(settings, conn), connection=conn, name=name)
        worker.work(logging_level=settings.log_level.upper())

    thread = threading.Thread(target=run, name="pda-embedded-worker", daemon=True)
    thread.start()
    return thread
