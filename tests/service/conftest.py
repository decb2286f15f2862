"""The service tests' own fixtures; the shared ones (a real Redis, worker processes, HTTP
servers, the status recorder) are in tests/conftest.py, helpers in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from pda.settings import Settings
from tests.support.waiting import wait_until


@pytest.fixture(autouse=True)
def _service_checks(declared_statuses, fresh_settings_cache) -> None:
    """Every status these tests receive is checked against /openapi.json (for the whole
    session, from the first such test on); each test starts with fresh settings."""


@pytest.fixture
def worker_client(settings: Settings, start_worker) -> Iterator[TestClient]:
    """The API in-process (TestClient) with one real ``pda worker`` process behind it,
    loaded and idle: for what a worker computes while the caller waits (predictions)."""
    from pda.jobs.workers import WorkerRegistry
    from service.main import create_app

    worker = start_worker(settings)
    registry = WorkerRegistry(redis.Redis.from_url(settings.redis_url))

    def idle() -> bool:
        assert worker.proc.poll() is None, worker.log.read_text()[-2000:]
        return any(w.get("state") == "idle" for w in registry.alive())

    wait_until("the worker to load its model", idle, timeout=180, every=0.2)
    with TestClient(create_app(settings, start_worker=False),
                    raise_server_exceptions=False) as c:
        yield c
