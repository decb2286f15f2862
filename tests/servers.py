"""A real ``pda serve`` process on a free loopback port, shared by the service and
browser tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``pda serve`` with the environment ``env``; waits until ``ready`` answers 200
    (``/livez`` for the process, ``/readyz`` for a loaded in-process worker too)."""

    def __init__(self, env: dict[str, str], log: Path, ready: str = "/livez",
                 timeout: float = 90) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pda.cli", "serve", "--port", str(self.port)],
            env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pda serve exited: {log.read_text()[-2000:]}")
            try:
                if self.http.get(ready, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"pda serve: {ready} not 200 in {timeout:.0f} s: "
                           f"{log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
