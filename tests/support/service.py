"""The service and worker tests' settings, environments and requests: a queue of their own
on the session's Redis, the environment of a real ``pda serve``/``pda worker`` process,
small sweeps, a submit, a problem document checked, a job waited for."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pda.settings import Settings

from .paths import CAT
from .waiting import wait_until

#: set by the session fixture ``redis_conn`` (tests/conftest.py): an explicit
#: PDA_TEST_REDIS_URL, or the session's own redis-server
REDIS_URL = os.environ.get("PDA_TEST_REDIS_URL", "")
#: small sweeps for tests: 7 x 7 windows of 32 px, 2 samples -> 99 forward passes
SMALL = {"window": "32", "stride": "32", "samples": "2", "faithfulness": "false"}
#: 14 x 14 windows, constant sampler: 197 forward passes, several seconds on one CPU thread
BIG = {"window": "16", "stride": "16", "sampler": "constant", "samples": "1",
       "faithfulness": "false"}
PNG = CAT.read_bytes()


def make_settings(**overrides) -> Settings:
    base = {"redis_url": REDIS_URL, "queue_name": f"test-{uuid.uuid4().hex[:8]}"}
    return Settings(**{**base, **overrides})


def env_for(settings: Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
    env.update({
        "PDA_REDIS_URL": settings.redis_url or "", "PDA_QUEUE_NAME": settings.queue_name,
        "PDA_HEARTBEAT_FILE": str(tmp_path / f"hb-{uuid.uuid4().hex[:6]}"),
        "PDA_HEARTBEAT_INTERVAL_SECONDS": "1", "PDA_LOG_LEVEL": "warning",
        "PDA_BATCH_SIZE": "8", "OMP_NUM_THREADS": "1",
        # embedded mode's own Redis keeps its files here (unused with a Redis URL)
        "PDA_DATA_DIR": str(tmp_path / f"data-{uuid.uuid4().hex[:6]}"),
    })
    env.update(extra)
    if not env["PDA_REDIS_URL"]:
        del env["PDA_REDIS_URL"]
    return env


def wait_for(http, job_id: str, statuses=("finished", "failed", "canceled"),
             timeout: float = 180, headers=None) -> dict:
    """The job resource once its status is one of ``statuses``."""
    last: dict = {}

    def reached() -> dict | None:
        last["job"] = job = http.get(f"/v1/explanations/{job_id}", headers=headers).json()
        return job if job["status"] in statuses else None

    return wait_until(f"job {job_id} to be {' or '.join(statuses)}", reached, timeout=timeout,
                      every=0.2, detail=lambda: last.get("job"))


def submit(client, data=SMALL, image=PNG, headers=None, name="cat.png"):
    return client.post("/v1/explanations", files={"image": (name, image, "image/png")},
                       data=data, headers=headers)


def post(server, data, image=PNG, **kw) -> dict:
    """Submit to a real ``pda serve`` (``server.http``), asserting 202; the job."""
    r = server.http.post("/v1/explanations", files={"image": ("x.png", image, "image/png")},
                         data=data, **kw)
    assert r.status_code == 202, r.text
    return r.json()


def assert_problem(r, status: int, needle: str | None = None, field: str | None = None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in r.text
    if needle:
        assert needle in body["detail"], body
    if field:
        assert field in [e["field"] for e in body.get("errors", [])] or body.get("field") == field
    return body
