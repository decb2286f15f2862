"""Fixtures for the browser tests: a real ``pda serve`` (embedded mode) and a real headless
Chromium (Debian's ``chromium``) driven by Playwright.

Playwright's own browser download is never used: ``executable_path`` points at the
system Chromium, which CI installs with ``apt-get install -y chromium``.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ARTIFACTS
from tests.support.servers import Server, worker_loaded
from tests.support.ui import API_KEY

CHROMIUM = os.environ.get("PDA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def _chromium() -> str:
    """The system Chromium; the tests skip, naming the fix, when it is missing (.ci/run
    installs it; nothing is installed from here)."""
    path = shutil.which(CHROMIUM) or shutil.which("chromium")
    if path:
        return path
    pytest.skip(f"no Chromium at {CHROMIUM} (PDA_TEST_CHROMIUM) nor on PATH: install "
                "Debian's package, as root: apt-get install -y chromium (.ci/run does)")


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the playwright package: pip install playwright "
                    "(never `playwright install`: they use the system Chromium)")
    executable = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def ui_server(log: Path, **env_extra: str) -> Server:
    """``pda serve`` with no PDA_REDIS_URL: its own Redis and worker (embedded mode), ready
    once that worker has loaded its model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
    env.update({"PDA_LOG_LEVEL": "warning",
                "PDA_HEARTBEAT_FILE": str(log.parent / f"hb-{uuid.uuid4().hex[:6]}"),
                "PDA_DATA_DIR": str(log.parent / f"data-{uuid.uuid4().hex[:6]}"),
                **env_extra})
    return Server(env, log, ready=worker_loaded)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    s = ui_server(tmp_path_factory.mktemp("ui") / "server.log")
    yield s
    s.stop()


@pytest.fixture
def keyed_server(tmp_path) -> Iterator[Server]:
    """A server that needs an API key; small batches so progress shows early."""
    s = ui_server(tmp_path / "server.log", PDA_API_KEYS=API_KEY, PDA_BATCH_SIZE="8")
    yield s
    s.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.ui_failed = rep.failed
    return rep


@pytest.fixture
def page(browser, request):
    """A fresh page that records the URL of every request it makes (``page.requests``)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.requests = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    yield pg
    if getattr(request.node, "ui_failed", False):
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        pg.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"), full_page=True)
    context.close()
