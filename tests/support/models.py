"""The process-wide model cache of :mod:`pda.models.registry`, emptied for tests that
count what it holds (fixture ``empty_model_cache``, registered by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def clear_model_cache() -> None:
    """Forget every cached model: the registry's cache dict, emptied under its lock."""
    from pda.models import registry  # torch: imported only by the tests that use it

    with registry._CACHE_LOCK:
        registry._CACHE.clear()


@pytest.fixture
def empty_model_cache() -> Iterator[None]:
    """The test starts and ends with no model cached in this process."""
    clear_model_cache()
    yield
    clear_model_cache()
