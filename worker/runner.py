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

from pda.engine.device import resolve_device
from pda.jobs import lifecycle
from pda.jobs.batches import Batches
from pda.jobs.chunks import chunk_queue
from pda.jobs.deliveries import Deliveries
from pda.jobs.queue import batch_queue, connect, get_queue, predict_queue
from pda.jobs.store import JobStore
from pda.jobs.workers import WorkerRegistry
from pda.runtime import Runtime
from pda.settings import Settings, get_settings
from worker import attempt
from worker.announce import announce_builtins, announce_model
from worker.deliveries import start_delivery_thread
from worker.tasks import store_for

log = logging.getLogger("pda.worker")


class PDAWorker(SimpleWorker):
    """SimpleWorker whose SIGTERM (or Ctrl-C) also stops the running attempt at its next
    progress report, which gives it back to the queue; a watchdog makes sure the process
    is gone within ``PDA_SHUTDOWN_GRACE_SECONDS`` whatever the attempt is doing."""

    def request_stop(self, signum, frame):  # noqa: ANN001 (RQ's signature)
        if not attempt.shutdown_requested.is_set():
            attempt.shutdown_requested.set()
            threading.Thread(target=_watchdog, args=(get_settings().shutdown_grace_seconds,),
                             daemon=True, name="pda-shutdown-watchdog").start()
        super().request_stop(signum, frame)


    def execute_job(self, job, queue):  # noqa: ANN001, ANN201 (RQ's signature)
        """Run one message; feed the batch queue when a worker takes a message (the queue
        has room again) and after it (an item may have ended its batch)."""
        _batch_tick(feed_only=True)
        try:
            return super().execute_job(job, queue)
        finally:
            _batch_tick()

    def subscribe(self) -> None:
        """RQ's command channel (for ``rq``'s send-kill/stop commands), with a one-second
        poll instead of RQ's 60 s: RQ's shutdown closes the pubsub while its thread waits
        in that poll, which held a stopping worker for up to a minute."""
        self.log.info("Worker %s: subscribing to channel %s", self.name,
                      self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler)


def _batch_tick(feed_only: bool = False) -> None:
    """End the batches whose items all ended, and feed the batch queue
    (:meth:`pda.jobs.batches.Batches.tick`; before a job only the feed, a few Redis
    calls); a failure waits for the maintenance pass."""
    try:
        settings = get_settings()
        batches = Batches(store_for(settings), settings)
        if feed_only:
            batches.feed()
        else:
            batches.tick()
    except Exception as exc:  # Redis away: the maintenance pass does it later
        log.warning("batches: %s", exc)


def _watchdog(grace: float) -> None:
    """After a warm-shutdown request: if the process still runs ``grace`` seconds later
    (an attempt in a long step that reports nothing: a model loading, a graph converting),
    give that attempt back ourselves and leave at once. The attempt's own give-back, had
    it come, is a compare-and-set: doing it twice is harmless."""
    time.sleep(grace)
    try:
        attempt.give_back_current()
    except Exception as exc:  # Redis away: the reaper reruns it once its beat is stale
        log.warning("shutdown watchdog: %s", exc)
    log.warning("the running attempt did not stop within %.0f s of the shutdown request "
                "(PDA_SHUTDOWN_GRACE_SECONDS); given back, exiting", grace)
    logging.shutdown()
    os._exit(0)


#: set once this process has loaded its models (its heartbeat says "loading" until then)
preloaded = threading.Event()


def preload(settings: Settings, conn: redis.Redis | None = None) -> None:
    """Load the configured models and the sampler statistics before taking jobs, and tell
    the API (through Redis) what this worker can serve."""
    from pda.engine import cache as sampler_cache
    from pda.engine.stats import get_stats
    from pda.models.registry import get_model

    device = resolve_device(settings.device)
    # the sampler factors' bounded caches: PDA_SAMPLER_CACHE_BYTES in memory, and on disk
    # (PDA_SAMPLER_DISK_BYTES) where every worker of the machine finds them
    sampler_cache.configure(settings.sampler_cache_bytes, settings.sampler_cache_dir,
                            settings.sampler_disk_bytes)
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
        rate = warm_backend(model, settings)
        if conn is not None:
            announce_model(conn, model)
            _first_rate(conn, settings, model.name, rate)
    preloaded.set()


def _first_rate(conn: redis.Redis, settings: Settings, model: str, rate: float | None) -> None:
    """A deployment's first ETA: the forward passes/s this worker just measured, where no
    attempt has measured the model yet (attempts then keep it current)."""
    if rate is None:
        return
    store = JobStore(conn, settings.result_ttl_seconds, settings.queue_name)
    try:
        if "rate" not in store.model_rates(model):
            store.record_rates(model, rate=rate)
    except redis.RedisError as exc:
        log.warning("could not publish the measured rate of %s: %s", model, exc)


def warm_backend(model: Any, settings: Settings) -> float | None:
    """Convert (or read back from PDA_BACKEND_CACHE_DIR) the output-layer graph now, so the
    first job does not pay for it, and time two batches on it: forward passes/s (None when
    the backend fails here: it fails the jobs then, not the start)."""
    import torch

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
        return None
    log.info("backend %s (%s) ready for %s in %.1f s", net.runtime.backend,
             net.runtime.precision, model.name, time.perf_counter() - t)
    x = torch.rand(batch, 3, *model.input_size, device=model.device)
    with torch.no_grad():
        net(x)  # the first call pays for allocations
        t = time.perf_counter()
        net(x)
    return batch / max(time.perf_counter() - t, 1e-9)


def maintenance_loop(settings: Settings, stop: threading.Event, name: str) -> None:
    """Beat (Redis and the heartbeat file) and reap abandoned jobs until ``stop`` is set.

    This thread beats whether or not a job is running, so a worker busy on a two-hour
    job stays counted as alive, and a killed one stops beating at once."""
    store = JobStore(connect(settings), settings.result_ttl_seconds, settings.queue_name)
    registry = WorkerRegistry(store.r, settings.worker_fresh_seconds)
    outbox = Deliveries(store.r, settings)
    batches = Batches(store, settings)
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
                batches.tick()  # batches that ended, and the batch queue's next items
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
    the next chunk of a huge one (pda.jobs.chunks); batch items last, fed a few at a time
    (pda.jobs.batches), so interactive work goes first."""
    return [predict_queue(settings, conn), get_queue(settings, conn),
            chunk_queue(settings, conn), batch_queue(settings, conn)]
