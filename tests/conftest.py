"""Suite-wide collection: the quick suite's membership by measured duration.

``tests/slow.txt`` lists the tests that took 3 s or more in a measured quick-suite run;
they get the ``slow`` marker here, so ``-m "not slow"`` stays quick without a decorator
on each (and a re-measurement is one edit of that file).

Below that, the fixtures the service and worker tests share: a real Redis, real worker
processes, a real HTTP server. The Redis is a throwaway ``redis-server`` the session
starts itself (free port, temporary folder), so the tests never flush a Redis they did not
start; ``PDA_TEST_REDIS_URL`` names another one explicitly (its database is then emptied
around every test). Helpers that are not fixtures live in tests/support/."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from pda.settings import Settings, get_settings
from tests.support import service as service_support
from tests.support.servers import RedisServer, Server, Worker
from tests.support.service import env_for, make_settings
from tests.support.statuses import StatusRecorder

#: fixtures of tests/support modules, visible to every test
pytest_plugins = ("tests.support.models",)
SLOW_LIST = Path(__file__).with_name("slow.txt")


def _slow_ids() -> set[str]:
    lines = SLOW_LIST.read_text().splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselect: every collected test is seen
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = _slow_ids()
    seen = set()
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)
            seen.add(item.nodeid)
    if any("::" in arg for arg in config.args):
        return  # single tests picked by id: their files' other tests are not collected
    files = {item.nodeid.split("::")[0] for item in items}
    stale = sorted(i for i in slow - seen if i.split("::")[0] in files)
    if stale:
        raise pytest.UsageError(f"tests/slow.txt names tests that do not exist: {stale}")


# --- the service and worker tests' fixtures -------------------------------------------------
# (tests/service/conftest.py and tests/worker/conftest.py turn on the status check and the
# fresh settings cache for every test of theirs)

@pytest.fixture(scope="session")
def declared_statuses() -> Iterator[StatusRecorder]:
    """Fails the session on any status a test received that /openapi.json does not
    declare for that route (tests/support/statuses.py)."""
    recorder = StatusRecorder()
    recorder.install()
    yield recorder
    recorder.uninstall()
    undeclared = recorder.undeclared()
    assert not undeclared, "statuses the OpenAPI document does not declare:\n" + "\n".join(
        undeclared)


@pytest.fixture
def fresh_settings_cache() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_conn(tmp_path_factory) -> Iterator[redis.Redis]:
    server = None
    if not service_support.REDIS_URL:
        if shutil.which("redis-server") is None:
            pytest.fail("these tests start their own redis-server, and none is installed "
                        "(.ci/run installs Debian's package)")
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        service_support.REDIS_URL = server.url  # make_settings() reads it
    url = service_support.REDIS_URL
    conn = redis.Redis.from_url(url)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"these tests need a real Redis at {url}: {exc}")
    yield conn
    if server is not None:
        server.stop()


@pytest.fixture
def clean_redis(redis_conn: redis.Redis) -> Iterator[redis.Redis]:
    redis_conn.flushdb()
    yield redis_conn
    redis_conn.flushdb()


@pytest.fixture
def settings(clean_redis) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from service.main import create_app

    with TestClient(create_app(settings, start_worker=False),
                    raise_server_exceptions=False) as c:
        yield c


def _starter(tmp_path: Path, cls: type, name: str, stop):
    """A fixture body: start processes of ``cls`` (a Worker or Server) on demand, each with
    its own log under ``tmp_path``, and ``stop`` every one of them at the end."""
    started: list = []

    def start(settings: Settings, **extra: str):
        p = cls(env_for(settings, tmp_path, **extra), tmp_path / f"{name}{len(started)}.log")
        started.append(p)
        return p

    yield start
    for p in started:
        stop(p)


@pytest.fixture
def start_worker(tmp_path: Path):
    yield from _starter(tmp_path, Worker, "worker", lambda w: w.stop(signal.SIGKILL))


@pytest.fixture
def start_server(tmp_path: Path):
    yield from _starter(tmp_path, Server, "server", lambda s: s.stop())
