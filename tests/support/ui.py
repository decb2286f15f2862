"""The browser tests' shared constants and checks (fixtures: tests/ui/conftest.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

#: the key the keyed server (fixture ``keyed_server``) asks for
API_KEY = "viewer-test-key"


def outside_requests(urls: list[str]) -> list[str]:
    """Requests that would leave the machine: anything but 127.0.0.1 (blob:/data: are local)."""
    return [u for u in urls
            if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u).hostname != "127.0.0.1"]
