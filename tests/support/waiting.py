"""Waiting on events: poll a condition until it holds or a deadline passes.

The one polling helper of the tests: a test waits for something it can observe (a status,
a log line, a later beat), never for a fixed time taken as evidence."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, predicate: Callable[[], T], timeout: float = 120,
               every: float = 0.1, detail: Callable[[], object] | None = None) -> T:
    """``predicate()``'s first truthy value, polled every ``every`` seconds.

    Once ``timeout`` seconds have passed without one: AssertionError naming ``what``, the
    predicate's last value and ``detail()`` (a job as last read, a log's tail). An
    exception the predicate raises (an assertion that a process still runs) ends the wait
    at once. The predicate is always asked at least once, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(min(every, max(0.0, deadline - time.monotonic())))
    extra = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                         f"(last value: {value!r:.500}){extra}")


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
