"""Fixtures for the service: a real Redis, real worker processes, a real HTTP server.

The Redis is a throwaway ``redis-server`` the session starts itself (free port, temporary
folder), so the tests never flush a Redis they did not start; ``PDA_TEST_REDIS_URL``
names another one explicitly (its database is then emptied around every test)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from pda.settings import Settings, get_settings

from ..servers import RedisServer, Server
from .statuses import StatusRecorder

ROOT = Path(__file__).resolve().parents[2]
CAT = ROOT / "examples" / "chelsea.png"
#: set by the session fixture ``redis_conn``: an explicit PDA_TEST_REDIS_URL, or our own
REDIS_URL = os.environ.get("PDA_TEST_REDIS_URL", "")
#: small sweeps for tests: 7 x 7 windows of 32 px, 2 samples -> 99 forward passes
SMALL = {"window": "32", "stride": "32", "samples": "2", "faithfulness": "false"}


@pytest.fixture(scope="session", autouse=True)
def declared_statuses() -> Iterator[StatusRecorder]:
    """Fails the session on any status a test received that /openapi.json does not
    declare for that route (tests/service/statuses.py)."""
    recorder = StatusRecorder()
    recorder.install()
    yield recorder
    recorder.uninstall()
    undeclared = recorder.undeclared()
    assert not undeclared, "statuses the OpenAPI document does not declare:\n" + "\n".join(
        undeclared)


@pytest.fixture(scope="session")
def redis_conn(tmp_path_factory) -> Iterator[redis.Redis]:
    global REDIS_URL
    server = None
    if not REDIS_URL:
        if shutil.which("redis-server") is None:
            pytest.fail("these tests start their own redis-server, and none is installed "
                        "(.ci/run installs Debian's package)")
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        REDIS_URL = server.url
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"these tests need a real Redis at {REDIS_URL}: {exc}")
    yield conn
    if server is not None:
        server.stop()


@pytest.fixture
def clean_redis(redis_conn: redis.Redis) -> Iterator[redis.Redis]:
    redis_conn.flushdb()
    yield redis_conn
    redis_conn.flushdb()


def make_settings(**overrides) -> Settings:
    base = {"redis_url": REDIS_URL, "queue_name": f"test-{uuid.uuid4().hex[:8]}"}
    return Settings(**{**base, **overrides})


@pytest.fixture
def settings(clean_redis) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from service.main import create_app

    with TestClient(create_app(settings, start_worker=False),
                    raise_server_exceptions=False) as c:
        yield c


def env_for(settings: Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
    env.update({
        "PDA_REDIS_URL": settings.redis_url or "", "PDA_QUEUE_NAME": settings.queue_name,
        "PDA_HEARTBEAT_FILE": str(tmp_path / f"hb-{uuid.uuid4().hex[:6]}"),
        "PDA_HEARTBEAT_INTERVAL_SECONDS": "1", "PDA_LOG_LEVEL": "warning",
        "PDA_BATCH_SIZE": "8", "OMP_NUM_THREADS": "1",
    })
    env.update(extra)
    if not env["PDA_REDIS_URL"]:
        del env["PDA_REDIS_URL"]
    return env


class Worker:
    """A real ``pda worker`` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pda.cli", "worker"], env=env, cwd=ROOT,
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def start_worker(tmp_path: Path):
    workers: list[Worker] = []

    def start(settings: Settings, **extra: str) -> Worker:
        w = Worker(env_for(settings, tmp_path, **extra), tmp_path / f"worker{len(workers)}.log")
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop(signal.SIGKILL)


@pytest.fixture
def start_server(tmp_path: Path):
    servers: list[Server] = []

    def start(settings: Settings, **extra: str) -> Server:
        s = Server(env_for(settings, tmp_path, **extra), tmp_path / f"server{len(servers)}.log")
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def wait_for(http, job_id: str, statuses=("finished", "failed", "canceled"),
             timeout: float = 180, headers=None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = http.get(f"/v1/explanations/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")


@pytest.fixture(autouse=True)
def _fresh_settings_cache():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def worker_client(settings: Settings, start_worker) -> Iterator[TestClient]:
    """The API in-process (TestClient) with one real ``pda worker`` process behind it,
    loaded and idle: for what a worker computes while the caller waits (predictions)."""
    from pda.jobs.workers import WorkerRegistry
    from service.main import create_app

    worker = start_worker(settings)
    registry = WorkerRegistry(redis.Redis.from_url(settings.redis_url))
    deadline = time.time() + 180
    while not any(w.get("state") == "idle" for w in registry.alive()):
        assert worker.proc.poll() is None, worker.log.read_text()[-2000:]
        assert time.time() < deadline, "the worker did not load its model"
        time.sleep(0.2)
    with TestClient(create_app(settings, start_worker=False),
                    raise_server_exceptions=False) as c:
        yield c
