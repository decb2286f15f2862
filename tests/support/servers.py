"""Real processes the service, worker and browser tests share: a throwaway
``redis-server`` and ``pda serve``, each on a free loopback port, and ``pda worker``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import redis

from pda.jobs.workers import WorkerRegistry
from service.embedded import machine_redis_server

from .paths import ROOT
from .waiting import wait_until

#: the machine's redis-server (the tests' throwaway servers), as embedded mode picks it
REDIS_SERVER = machine_redis_server() or "redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def maintenance_ran_after(conn: redis.Redis, since: float, timeout: float = 60) -> None:
    """Wait until every live worker has run a whole maintenance cycle that began after
    ``since`` (``worker.runner.maintenance_loop``: beat, reap abandoned jobs, repair lost
    messages, sleep): its first beat after ``since``, then its next beat, which comes only
    once that cycle's reaping has returned. Whatever a reaper does with what was stale
    at ``since`` is done by then, so a test may assert that it did not happen."""
    registry = WorkerRegistry(conn)

    def beats() -> dict[str, float]:
        return {w["name"]: w["beat_at"] for w in registry.alive() if "beat_at" in w}

    first = wait_until(f"a beat of every worker after {since:.3f}",
                       lambda: (b := beats()) and min(b.values()) > since and b,
                       timeout=timeout, detail=beats)
    wait_until("the next beat of each (its cycle's reaping done)",
               lambda: all(beats().get(n, 0) > t for n, t in first.items()),
               timeout=timeout, detail=beats)


def worker_loaded(http: httpx.Client) -> bool:
    """An idle worker has loaded its models (the embedded one of ``pda serve`` included)."""
    r = http.get("/readyz", timeout=5)
    return r.status_code == 200 and r.json()["workers"].get("idle", 0) >= 1


class Server:
    """``pda serve`` with the environment ``env``; waits until ``ready`` answers 200
    (a path such as ``/livez``), or until ``ready(http)`` is true (:func:`worker_loaded`)."""

    def __init__(self, env: dict[str, str], log: Path, ready="/livez",
                 timeout: float = 90) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pda.cli", "serve", "--port", str(self.port)],
            env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=30)
        try:
            wait_until(f"pda serve: {ready}", lambda: self._ready(ready), timeout=timeout,
                       every=0.3, detail=lambda: log.read_text()[-2000:])
        except BaseException:
            self.stop()
            raise

    def _ready(self, ready) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"pda serve exited: {self.log.read_text()[-2000:]}")
        try:
            return bool(ready(self.http) if callable(ready)
                        else self.http.get(ready, timeout=5).status_code == 200)
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisServer:
    """A ``redis-server`` of the tests' own, on a free port with its files in ``workdir``:
    tests never touch (let alone flush) a Redis they did not start. ``appendonly`` keeps
    an append-only file, so a restart keeps the data (the fault tests); ``args`` adds
    configuration such as ``["--maxmemory", "2mb"]``."""

    def __init__(self, workdir: Path, *, appendonly: bool = False,
                 args: list[str] | None = None) -> None:
        self.port, self.dir = free_port(), workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.appendonly = appendonly
        self.args = args or []
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.dir),
             "--daemonize", "no", *self.args],
            stdout=(self.dir / "redis.log").open("a"), stderr=subprocess.STDOUT)
        conn = redis.Redis(port=self.port, socket_connect_timeout=1)
        log = self.dir / "redis.log"

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log.read_text()[-1000:]}")
            return _pings(conn)

        wait_until("redis-server to answer PING", answers, timeout=20, every=0.05,
                   detail=lambda: log.read_text()[-1000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # a clean shutdown: the append-only file is complete
            self.proc.wait(20)


def _pings(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except redis.RedisError:
        return False


class Worker:
    """A real ``pda worker`` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pda.cli", "worker"], env=env, cwd=ROOT,
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
