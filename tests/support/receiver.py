"""A real webhook receiver on loopback: an HTTP server in a thread of the test process that
records every request it gets and answers as the test scripts it (a status per request,
a hang, a redirect, a huge body). Callback tests point ``callback_url`` at it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .servers import free_port


@dataclass
class Received:
    """One request as the receiver got it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int | None = None

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """``answers``: the status of each request in turn (then ``then``); a status of 0 hangs
    the request until :meth:`release` (or the client goes away)."""

    answers: list[int] = field(default_factory=list)
    then: int = 200
    headers_out: dict[str, str] = field(default_factory=dict)
    body_out: bytes = b"ok"
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.body_sent: list[bool] = []  # per answer: whether the whole body went out
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                receiver._handle(self)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        got = Received(h.path, {k.lower(): v for k, v in h.headers.items()},
                       h.rfile.read(length), time.time())
        with self._lock:
            status = self.answers.pop(0) if self.answers else self.then
            self.received.append(got)
        if status == 0:  # hang: answer nothing until released or the client is gone
            self._release.wait(120)
            return
        got.answered = status
        h.send_response(status)
        for k, v in self.headers_out.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(self.body_out)))
        h.end_headers()
        try:
            h.wfile.write(self.body_out)
            h.wfile.flush()
            self.body_sent.append(True)
        except OSError:
            self.body_sent.append(False)

    def release(self) -> None:
        self._release.set()

    def events(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
