"""Every status the service tests receive is one the OpenAPI document declares.

:class:`StatusRecorder` wraps ``httpx.Client.send`` (which the in-process TestClient and
the tests' clients of real ``pda serve`` processes all go through) for the session and
notes, for each response, the route it answered (matched against the paths of that
app's or that server's own ``/openapi.json``), the method and the status. At the end of
the session :meth:`undeclared` lists each (method, route, status) that the document does
not declare for that operation; tests/conftest.py fails the session on any. Only
what was received is checked, so it holds for any subset of the tests.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import httpx

Spec = dict[str, Any]


def _path_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


class StatusRecorder:
    """Records (spec, method, path, status) for every response httpx hands back."""

    def __init__(self, title: str = "pda") -> None:
        self.title = title  # only documents of this title (the service's) are checked
        self.seen: dict[tuple[str, str, str, int], int] = {}  # -> count
        self.specs: dict[str, Spec | None] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._original: Callable[..., httpx.Response] | None = None

    def install(self) -> None:
        self._original = original = httpx.Client.send
        recorder = self

        def send(client: httpx.Client, request: httpx.Request, *args, **kwargs):
            response = original(client, request, *args, **kwargs)
            if not getattr(recorder._local, "busy", False):
                recorder._local.busy = True
                try:
                    recorder.record(client, request, response)
                finally:
                    recorder._local.busy = False
            return response

        httpx.Client.send = send  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            httpx.Client.send = self._original  # type: ignore[method-assign]

    def _spec_of(self, client: httpx.Client, request: httpx.Request) -> tuple[str, Spec | None]:
        app = getattr(client, "app", None)  # the TestClient's FastAPI app
        if app is not None:
            key = f"app:{id(app)}"
            if key not in self.specs:
                openapi = getattr(app, "openapi", None)
                self.specs[key] = openapi() if callable(openapi) else None
            return key, self.specs[key]
        base = f"{request.url.scheme}://{request.url.netloc.decode()}"
        if base not in self.specs:  # a real server: read its document while it is up
            try:
                r = httpx.get(f"{base}/openapi.json", timeout=10)
                self.specs[base] = r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                self.specs[base] = None
        return base, self.specs[base]

    def record(self, client: httpx.Client, request: httpx.Request,
               response: httpx.Response) -> None:
        key, spec = self._spec_of(client, request)
        if not spec or spec.get("info", {}).get("title") != self.title:
            return
        route = self.route(spec, request.url.path)
        method = request.method.lower()
        if route is None or method not in spec["paths"][route]:
            return  # no such operation: the generic 404/405, not a route's answer
        with self._lock:
            k = (key, method, route, response.status_code)
            self.seen[k] = self.seen.get(k, 0) + 1

    @staticmethod
    def route(spec: Spec, path: str) -> str | None:
        paths = spec.get("paths", {})
        if path in paths:
            return path
        for template in paths:
            if "{" in template and _path_regex(template).fullmatch(path):
                return template
        return None

    def undeclared(self) -> list[str]:
        out = []
        for (key, method, route, status), n in sorted(self.seen.items()):
            spec = self.specs[key] or {}
            declared = spec["paths"][route][method].get("responses", {})
            if str(status) not in declared and f"{str(status)[0]}XX" not in declared:
                out.append(f"{method.upper()} {route} answered {status} ({n}x), declared: "
                           f"{', '.join(sorted(declared))}")
        return out

    def received(self) -> set[tuple[str, str, int]]:
        """(method, route, status) triples seen, across apps and servers."""
        return {(m, r, s) for _, m, r, s in self.seen}
