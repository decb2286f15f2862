"""Probes and metrics: ``/livez``, ``/readyz``, ``/metrics`` (no API key needed)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from rq import Worker

from ..deps import StateDep
from ..metrics import metrics_response

router = APIRouter(tags=["health"])
#: a worker counts as alive when its RQ heartbeat is this recent
WORKER_FRESH_SECONDS = 120


@router.get("/livez")
def livez() -> dict:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: StateDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker is alive; 503 otherwise."""
    checks: dict[str, object] = {}
    try:
        state.conn.ping()
        checks["redis"] = "ok"
        workers = Worker.all(queue=state.queue)
        now = time.time()
        alive = [w for w in workers if w.last_heartbeat is None
                 or now - w.last_heartbeat.timestamp() < WORKER_FRESH_SECONDS]
        checks["workers"] = len(alive)
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
        checks["workers"] = 0
    ready = checks["redis"] == "ok" and checks["workers"] > 0
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "mode": "embedded" if state.embedded else "redis"}
    if not ready:
        return JSONResponse(body, status_code=503, media_type="application/problem+json"
                            if False else "application/json", headers={"Retry-After": "5"})
    return JSONResponse(body)


@router.get("/metrics")
def metrics():
    """Prometheus text format."""
    return metrics_response()
