"""Prometheus metrics: per-process HTTP metrics plus cluster-wide job metrics.

Job outcomes, sweep durations and forward passes are counted in Redis by the workers
(which have no HTTP port) and exported here at scrape time, so they are cluster-wide:
with several API replicas, aggregate them with ``max`` rather than ``sum``.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pda.jobs.store import SWEEP_BUCKETS

REQUEST_LATENCY = Histogram(
    "pda_http_request_duration_seconds", "HTTP request latency by route and status",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_SUBMITTED = Counter("pda_jobs_submitted_total", "Explanation jobs accepted", ["model"])


class LatencyMiddleware:
    """Each request's time to its response's start (headers), by route and status.

    A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which would copy
    every chunk of every response body through a stream of its own: for the long-lived
    event streams (service/events.py) that doubled the API's CPU per event."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen = False

        def observe(status: int) -> None:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUEST_LATENCY.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - start)

        async def timed(message: Message) -> None:
            nonlocal seen
            if message["type"] == "http.response.start" and not seen:
                seen = True
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            if not seen:  # an exception escaped before any answer
                observe(500)


class StoreCollector:
    """Reads job counters, queue depth and workers from Redis at scrape time."""

    def __init__(self, app) -> None:
        self.app = app

    def collect(self):
        state = getattr(self.app.state, "pda", None)
        up = GaugeMetricFamily("pda_store_up", "1 when Redis answered this scrape")
        if state is None:
            return
        hub = getattr(self.app.state, "event_hub", None)
        if hub is not None:
            yield GaugeMetricFamily("pda_event_streams", "Event streams (GET .../events) open "
                                    "in this API process", value=hub.streams)
        try:
            jobs, sweep = state.store.metrics()
            depth = state.queue.count
            running = state.store.running_count()
            workers = state.registry.summary()
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        outcomes = CounterMetricFamily("pda_jobs", "Jobs ended, by outcome and model",
                                       labels=["outcome", "model"])
        for key, n in sorted(jobs.items()):
            outcome, _, model = key.partition("|")
            outcomes.add_metric([outcome, model], n)
        yield outcomes
        yield GaugeMetricFamily("pda_queue_depth", "Jobs waiting in the queue", value=depth)
        yield GaugeMetricFamily("pda_jobs_running", "Jobs being computed now", value=running)
        yield GaugeMetricFamily("pda_workers", "Workers alive (heartbeat within "
                                "PDA_WORKER_FRESH_SECONDS), busy or idle",
                                value=workers["alive"])
        yield GaugeMetricFamily("pda_workers_busy", "Workers computing a job now",
                                value=workers["busy"])
        yield CounterMetricFamily("pda_forward_passes", "Forward passes computed by workers",
                                  value=sweep.get("passes", 0))
        yield GaugeMetricFamily("pda_forward_passes_per_second",
                                "Sweep speed of the last finished job",
                                value=sweep.get("last_rate", 0.0))
        buckets = [(str(b), sweep.get(f"le_{b}", 0)) for b in SWEEP_BUCKETS]
        buckets.append(("+Inf", sweep.get("count", 0)))
        yield HistogramMetricFamily("pda_sweep_duration_seconds", "Duration of finished sweeps",
                                    buckets=buckets, sum_value=sweep.get("sum", 0.0))


_collector: StoreCollector | None = None


def install(app) -> None:
    global _collector
    app.add_middleware(LatencyMiddleware)
    if _collector is not None:  # one collector per process; tests build many apps
        REGISTRY.unregister(_collector)
    _collector = StoreCollector(app)
    REGISTRY.register(_collector)


def metrics_response() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
