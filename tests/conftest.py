"""Suite-wide collection: the quick suite's membership by measured duration.

``tests/slow.txt`` lists the tests that took 3 s or more in a measured quick-suite run;
they get the ``slow`` marker here, so ``-m "not slow"`` stays quick without a decorator
on each (and a re-measurement is one edit of that file)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
