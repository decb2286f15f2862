"""The API's cost of open event streams: RSS and CPU of ``pda serve`` with N streams open.

Usage: python scripts/measure/event_streams.py [--streams 100,500] [--jobs 10]
                                               [--seconds 20] [--json FILE]

Starts its own redis-server and ``pda serve`` (Redis mode, no worker, so the jobs stay
queued and their streams open), submits ``--jobs`` jobs, then measures the server process
from /proc (RSS; CPU time over a window of ``--seconds``):

- idle, no stream open;
- for each count in ``--streams``: that many streams (``GET /v1/explanations/{id}/events``,
  spread evenly over the jobs, all in one asyncio client process) while the jobs are
  quiet, and then while this script writes each job's progress 4 times a second
  (``JobStore.set_progress``, as a worker's throttled reports do), counting the events the
  streams receive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pda.jobs.store import JobStore  # noqa: E402
from tests.support.memory_probe import rss_mb  # noqa: E402
from tests.support.paths import CAT  # noqa: E402
from tests.support.servers import RedisServer, Server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
JOB = {"window": "16", "stride": "16", "sampler": "constant", "samples": "1",
       "faithfulness": "false"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def window(pid: int, seconds: float) -> float:
    """CPU use of ``pid`` over the next ``seconds``, in % of one core."""
    c, t = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - c) / (time.perf_counter() - t)


class Streams:
    """``n`` streams over ``jobs``, read in a thread's event loop; counts events."""

    def __init__(self, url: str, jobs: list[str], n: int) -> None:
        self.url, self.jobs, self.n = url, jobs, n
        self.events = 0
        self.open = 0
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _one(self, client: httpx.AsyncClient, job: str) -> None:
        async with client.stream("GET", f"{self.url}/v1/explanations/{job}/events") as r:
            self.open += 1
            if self.open == self.n:
                self.ready.set()
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    self.events += 1

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10, read=None)) \
                as client:
            tasks = []
            for i in range(self.n):
                tasks.append(asyncio.create_task(self._one(client, self.jobs[i % len(self.jobs)])))
                await asyncio.sleep(0.005)  # a steady trickle, not one burst
            while not self.stop.is_set():
                await asyncio.sleep(0.1)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def progress_writer(store: JobStore, jobs: list[str], stop: threading.Event) -> None:
    done = 0
    while not stop.is_set():
        done += 1
        for job in jobs:
            store.set_progress(job, min(done, 196), 197, phase="sweeping")
        time.sleep(0.25)


def measure(server: Server, store: JobStore, jobs: list[str], n: int, seconds: float,
            before_rss: float) -> dict:
    pid = server.proc.pid
    streams = Streams(server.url, jobs, n)
    if not streams.ready.wait(120):
        raise SystemExit(f"only {streams.open} of {n} streams opened")
    time.sleep(2)
    quiet_rss, quiet_cpu = rss_mb(pid), window(pid, seconds)
    stop = threading.Event()
    writer = threading.Thread(target=progress_writer, args=(store, jobs, stop), daemon=True)
    writer.start()
    time.sleep(1)
    first = streams.events
    busy_cpu = window(pid, seconds)
    got = streams.events - first
    busy_rss, n_threads = rss_mb(pid), threads(pid)
    stop.set()
    writer.join()
    streams.stop.set()
    streams.thread.join(30)
    return {"streams": n, "jobs": len(jobs), "rss_quiet_mb": round(quiet_rss, 1),
            "rss_busy_mb": round(busy_rss, 1),
            "kb_per_stream": round(1024 * (busy_rss - before_rss) / n, 1),
            "cpu_quiet_pct": round(quiet_cpu, 1), "cpu_busy_pct": round(busy_cpu, 1),
            "events_per_stream_per_s": round(got / n / seconds, 2), "threads": n_threads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", default="100,500")
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rds = RedisServer(Path(tmp) / "redis")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
        env.update(PDA_REDIS_URL=rds.url, PDA_LOG_LEVEL="warning",
                   PDA_MAX_QUEUED_PER_KEY="1000", PDA_RATE_LIMIT_PER_MINUTE="1000000")
        server = Server(env, Path(tmp) / "server.log")
        store = JobStore(redis.Redis.from_url(rds.url))
        try:
            jobs = []
            for seed in range(args.jobs):
                r = server.http.post("/v1/explanations", data={**JOB, "seed": str(seed)},
                                     files={"image": ("cat.png", CAT.read_bytes())})
                r.raise_for_status()
                jobs.append(r.json()["id"])
            pid = server.proc.pid
            time.sleep(2)
            idle_rss, idle_cpu = rss_mb(pid), window(pid, args.seconds)
            rows = [{"streams": 0, "jobs": len(jobs), "rss_quiet_mb": round(idle_rss, 1),
                     "cpu_quiet_pct": round(idle_cpu, 1), "threads": threads(pid)}]
            print(f"idle: RSS {idle_rss:.1f} MB, CPU {idle_cpu:.1f} %, "
                  f"{threads(pid)} threads")
            for n in (int(s) for s in args.streams.split(",")):
                row = measure(server, store, jobs, n, args.seconds, idle_rss)
                rows.append(row)
                print(json.dumps(row))
                time.sleep(3)  # the closed streams are let go of
        finally:
            server.stop()
            rds.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
