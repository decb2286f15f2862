"""Waiting on events: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, predicate: Callable[[], T], timeout: float = 120,
               every: float = 0.1) -> T:
    """``predicate()``'s first truthy value, polled every ``every`` seconds; AssertionError
    naming ``what`` once ``timeout`` seconds have passed without one."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Poller:
    """What a client polling ``/v1/explanations/{id}`` sees, in a thread: every
    ``progress.done`` it is shown until :meth:`stop` (or until the job ends)."""

    def __init__(self, http, job_id: str, every: float = 0.02) -> None:  # noqa: ANN001
        import threading

        self.http, self.job_id, self.every = http, job_id, every
        self.seen: list[int] = []
        self.statuses: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.http.get(f"/v1/explanations/{self.job_id}")
            except Exception:  # noqa: BLE001 (a server restarting: try again)
                time.sleep(self.every)
                continue
            if r.status_code == 200:
                body = r.json()
                self.seen.append(body["progress"]["done"])
                self.statuses.append(body)
                if body["status"] in ("finished", "failed", "canceled"):
                    return
            time.sleep(self.every)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.seen
