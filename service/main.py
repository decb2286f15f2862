"""Builds the FastAPI app, and ``pda serve``.

With ``PDA_REDIS_URL`` set, the API only enqueues; ``pda worker`` processes compute.
Without it (embedded mode) the same API runs over an in-process fakeredis server with
one in-process worker thread, so one command serves a working API on a laptop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from pda.jobs.queue import connect, get_queue, predict_queue
from pda.jobs.store import JobStore
from pda.jobs.workers import WorkerRegistry
from pda.settings import Settings, get_settings
from pda.version import __version__

from . import docs, events, limits, memory, metrics, problems
from .deps import AppState
from .routes import events as event_routes
from .routes import explanations, health, models, predictions, ui

log = logging.getLogger("pda.api")

DESCRIPTION = """Explains image classifiers' decisions with Prediction Difference Analysis
(Zintgraf et al., ICLR 2017): red pixels are evidence for a class, blue against.

Submit an image with `POST /v1/explanations`, poll the job at its `Location`, then fetch
`/relevance` (JSON grids) or `/overlay.png`. Errors are RFC 9457 problem documents."""


def create_app(settings: Settings | None = None, *, start_worker: bool | None = None,
               worker: Callable[[Settings], Any] | None = None) -> FastAPI:
    """The API. In embedded mode (no PDA_REDIS_URL) ``pda serve`` passes ``worker``, the
    in-process worker's starter (it may load torch; this package never imports it);
    ``start_worker=False`` leaves it out (tests)."""
    settings = settings or get_settings()
    memory.configure()
    embedded = not settings.redis_url
    conn = connect(settings)
    state = AppState(settings=settings, conn=conn,
                     store=JobStore(conn, settings.result_ttl_seconds, settings.queue_name),
                     queue=get_queue(settings, conn), embedded=embedded,
                     registry=WorkerRegistry(conn, settings.worker_fresh_seconds),
                     predict_queue=predict_queue(settings, conn))
    run_worker = worker is not None and (embedded if start_worker is None else start_worker)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if run_worker:
            app.state.worker_thread = worker(settings)
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
    app.include_router(models.router)
    app.include_router(predictions.router)
    app.include_router(health.router)
    ui.install(app)
    docs.install(app, settings)
    return app


def serve(host: str | None = None, port: int | None = None,
          worker: Callable[[Settings], Any] | None = None) -> int:
    """Run the API with uvicorn; ``worker`` starts the embedded worker (no Redis URL)."""
    import uvicorn

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = host or settings.host
    port = port or settings.port
    if not settings.redis_url:
        log.info("no PDA_REDIS_URL: embedded queue and in-process worker")
    uvicorn.run(create_app(settings, worker=worker), host=host, port=port,
                log_level=settings.log_level, proxy_headers=True, timeout_graceful_shutdown=10)
    return 0
