"""Readiness: the API is ready when it can accept and serve requests, whatever the workers
do; worker availability is reported truthfully (body, metrics, job resource).

Real Redis, a real ``pda serve`` and a real ``pda worker``; the freshness window is cut to
3 s (beats every second) so a job "longer than the freshness window" takes seconds."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.figures import record
from tests.support.service import make_settings, post
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

FAST_BEATS = {"PDA_WORKER_FRESH_SECONDS": "3", "PDA_HEARTBEAT_INTERVAL_SECONDS": "1"}
#: 13 x 13 windows x 2 samples: over the 3 s freshness window on one thread
LONG = {"window": "32", "stride": "16", "samples": "2"}


def test_api_stays_ready_through_busy_idle_and_killed_workers(clean_redis, start_server,
                                                              start_worker):
    settings = make_settings()
    server = start_server(settings, **FAST_BEATS)
    http = server.http

    def ready() -> dict:
        r = http.get("/readyz")
        assert r.status_code == 200, r.text  # never unready because of workers
        return r.json()["workers"]

    assert ready()["alive"] == 0  # no worker at all (KEDA scaled to zero): still ready
    job = post(server, LONG)
    waiting = http.get(f"/v1/explanations/{job['id']}").json()
    assert waiting["eta_seconds"] is None and "no worker is alive" in waiting["note"]

    worker = start_worker(settings, **FAST_BEATS)
    # generous: CI machines are shared
    wait_until("the worker's first beat", lambda: ready()["alive"] != 0, timeout=600,
               every=0.2)
    seen = {"busy": False, "started": None}

    def finished() -> bool:
        cur = http.get(f"/v1/explanations/{job['id']}").json()
        if cur["status"] == "finished":
            return True
        assert cur["status"] in ("queued", "running"), cur
        w = ready()
        assert w["alive"] == 1, w  # busy on a job longer than the freshness window
        if cur["status"] == "running":
            seen["started"] = seen["started"] or time.time()
            seen["busy"] |= w["busy"] == 1
            assert cur["note"] is None
        return False

    wait_until("the job to finish", finished, timeout=600, every=0.3)
    seen_busy, busy_seconds = seen["busy"], time.time() - seen["started"]
    assert seen_busy and busy_seconds > 3, busy_seconds

    wait_until("the next beat to say idle", lambda: ready()["idle"] == 1, timeout=10,
               every=0.2)
    idle_from = time.time()

    def counted_while_idle() -> bool:
        w = ready()
        assert (w["alive"], w["idle"], w["busy"]) == (1, 1, 0), w
        return time.time() - idle_from >= 5

    # on purpose: idle for longer than the 3 s window, and still counted all along
    wait_until("5 s of idle, counted", counted_while_idle, timeout=10, every=0.5)

    worker.stop(signal.SIGKILL)
    killed = time.time()
    wait_until("a killed worker to stop counting", lambda: ready()["alive"] == 0, timeout=10,
               every=0.2)
    gone_after = time.time() - killed
    metrics = http.get("/metrics").text
    assert "pda_workers 0.0" in metrics
    record("readiness", busy_job_seconds=busy_seconds, idle_seconds=5,
           killed_worker_uncounted_after_seconds=gone_after, fresh_window_seconds=3)
