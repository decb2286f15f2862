"""The worker tests' fixtures: the shared ones (a real Redis, worker processes, HTTP
servers, the status recorder) are in tests/conftest.py, helpers in tests/support/."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _service_checks(declared_statuses, fresh_settings_cache) -> None:
    """As for the service tests: every status received is checked against /openapi.json
    (for the whole session), and each test starts with fresh settings."""
