"""Probes and metrics: ``/livez``, ``/readyz``, ``/metrics`` (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..deps import StateDep
from ..metrics import metrics_response
from ..schemas import Liveness, Readiness

router = APIRouter(tags=["health"])


@router.get("/livez", response_model=Liveness)
def livez() -> dict:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(state: StateDep) -> JSONResponse:
    """Ready when this pod can accept and serve requests: the app started and Redis answers.

    Workers do not gate readiness (busy, idle, or scaled to zero, the API still queues
    jobs and serves results); how many are alive is reported in the body."""
    checks: dict[str, object] = {}
    workers: dict[str, object] = {}
    try:
        state.conn.ping()
        checks["redis"] = "ok"
        workers = state.registry.summary()
        checks["workers"] = workers["alive"]
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    ready = checks["redis"] == "ok"
    body = {"status": "ready" if ready else "not ready", "checks": checks, "workers": workers,
            "mode": "embedded" if state.embedded else "redis"}
    if not ready:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(body)


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus text format."""
    return metrics_response()
