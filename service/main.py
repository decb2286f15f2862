"""Builds the FastAPI app, and ``pda serve``.

With ``PDA_REDIS_URL`` set, the API only enqueues; ``pda worker`` processes compute.
Without it (embedded mode, :mod:`service.embedded`) ``pda serve`` starts a Redis server of
its own with append-only persistence and a ``pda worker`` process, so one command serves
the same API on a laptop, with the same parts as a cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI

from pda.jobs.queue import connect, get_queue, predict_queue
from pda.jobs.store import JobStore
from pda.jobs.workers import WorkerRegistry
from pda.settings import Settings, get_settings
from pda.version import __version__

from . import docs, events, limits, memory, metrics, problems, protocol
from .deps import AppState
from .routes import batches, explanations, health, models, predictions, ui
from .routes import events as event_routes

log = logging.getLogger("pda.api")

DESCRIPTION = """Explains image classifiers' decisions with Prediction Difference Analysis
(Zintgraf et al., ICLR 2017): red pixels are evidence for a class, blue against.

Submit an image with `POST /v1/explanations`, poll the job at its `Location`, then fetch
`/relevance` (JSON grids) or `/overlay.png`. Errors are RFC 9457 problem documents."""


def create_app(settings: Settings | None = None, *, embedded: bool = False,
               start_worker: bool | None = None) -> FastAPI:
    """The API over ``settings.redis_url``; ``embedded``: that Redis and its workers are
    ``pda serve``'s own (then the API may read model files the local worker reads).
    ``start_worker`` is accepted for older callers and ignored: the API never runs a
    worker (workers are processes of their own, in embedded mode too)."""
    settings = settings or get_settings()
    memory.configure()
    conn = connect(settings) if settings.redis_url else _unconfigured(settings)
    state = AppState(settings=settings, conn=conn,
                     store=JobStore(conn, settings.result_ttl_seconds, settings.queue_name),
                     queue=get_queue(settings, conn), embedded=embedded,
                     registry=WorkerRegistry(conn, settings.worker_fresh_seconds),
                     predict_queue=predict_queue(settings, conn))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield

    app = FastAPI(title="pda", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # served offline by docs.install
                  # operation ids are the handlers' names: a generated client's functions
                  # are create_explanation, get_relevance, ... rather than FastAPI's
                  # create_explanation_v1_explanations_post
                  generate_unique_id_function=lambda route: route.name)
    app.state.pda = state
    app.state.event_hub = events.Hub(conn)  # every event stream of this process
    problems.install(app)
    limits.install(app, settings)  # 413 for bodies over the cap, even chunked
    metrics.install(app)
    app.include_router(explanations.router)
    app.include_router(event_routes.router)
    app.include_router(batches.router)
    app.include_router(models.router)
    app.include_router(predictions.router)
    app.include_router(health.router)
    ui.install(app)
    docs.install(app, settings)
    return app


def _unconfigured(settings: Settings):
    """A client for an app built without a Redis (tests of static pages and the OpenAPI
    document): every call fails as an unreachable store does, with a 503."""
    import redis

    return redis.Redis(unix_socket_path="/nonexistent/pda-no-redis.sock",
                       socket_connect_timeout=0.1, socket_timeout=0.1)


def serve(host: str | None = None, port: int | None = None) -> int:
    """Run the API with uvicorn; with no ``PDA_REDIS_URL``, embedded mode: a Redis server
    and a worker of its own (:class:`service.embedded.Embedded`), stopped in order when
    the API stops (Ctrl-C, SIGTERM)."""
    import uvicorn

    from .embedded import Embedded, EmbeddedError

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = host or settings.host
    port = port or settings.port
    embedded = None if settings.redis_url else Embedded(settings)
    seen: list[int] = []
    # uvicorn stops gracefully on SIGINT/SIGTERM, then restores the handlers it found and
    # raises the signal again: with these, that ends here instead of in a KeyboardInterrupt
    # traceback from inside its event loop
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: seen.append(signum))
    try:
        if embedded is not None:
            settings = embedded.start()
        # forwarded headers are read by the app itself, from PDA_TRUSTED_PROXIES only
        # (service.limits.install); the protocol layer answers problem documents too
        uvicorn.run(create_app(settings, embedded=embedded is not None), host=host,
                    port=port, log_level=settings.log_level, proxy_headers=False,
                    timeout_graceful_shutdown=10, **protocol.uvicorn_options())
    except EmbeddedError as exc:
        print(f"pda: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            # a second Ctrl-C while the worker gives its job back: leave now (the kernel
            # still sends the children SIGTERM, and each stops on its own)
            signal.signal(signal.SIGINT, lambda *_: os._exit(130))
            embedded.stop()
    return 130 if signal.SIGINT in seen else 0
