"""Rolling restart of the compose stack's API and workers under load: 0 failed requests and
0 lost jobs, or exit 1. Run by scripts/ops/compose-smoke.sh (ROLLING=1) against its stack.

    python3 scripts/ops/compose_rolling.py [--clients 20] [--docker docker]

Compose has no load balancer, so this plays the part of a Kubernetes Service the way
k8s/base/api.yaml relies on it: the API runs as 2 replicas (API_PORT=0: each on a port of
its own, reached here at its container address); clients send each request to one of the
*endpoints*, the replicas that answer /readyz and are not being stopped. The roll does what
a Deployment with maxSurge 1, maxUnavailable 0 and a preStop sleep does: start a new
replica, add it to the endpoints once /readyz answers, take an old one out of the
endpoints, wait (the preStop), then stop it with SIGTERM (uvicorn finishes what it is
serving). Workers roll the same way: a new worker first, then `docker stop` of an old one
(SIGTERM: warm stop at a batch boundary, its job back on the queue).

Each client submits a small job, polls it until finished and submits the next; any
connection error or 5xx is a failed request, any job not finished at the end a lost one.
Standard library only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE = (REPO / "examples" / "chelsea.png").read_bytes()
# A job of 49 forward passes: seconds, so jobs keep flowing through the roll.
PARAMS = {"window": "32", "stride": "32", "samples": "1", "faithfulness": "false"}


class Endpoints:
    """The replicas a Service would route to, round robin."""

    def __init__(self) -> None:
        self.lock, self.urls, self.rr = threading.Lock(), [], itertools.count()

    def set(self, urls: list[str]) -> None:
        with self.lock:
            self.urls = list(urls)

    def pick(self) -> str:
        with self.lock:
            return self.urls[next(self.rr) % len(self.urls)]


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.failed = 0
        self.failures: list[str] = []
        self.submitted: set[str] = set()
        self.finished: set[str] = set()

    def record(self, ok: bool, what: str) -> None:
        with self.lock:
            self.requests += 1
            if not ok:
                self.failed += 1
                self.failures.append(what)


def request(eps: Endpoints, stats: Stats, method: str, path: str, body: bytes | None = None,
            ctype: str | None = None) -> dict | None:
    url = eps.pick() + path
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            doc = json.loads(resp.read() or b"null")
        stats.record(True, url)
        return doc
    except urllib.error.HTTPError as exc:
        # 4xx is an answer (e.g. 429 when a key's queue is full), 5xx a failure
        stats.record(exc.code < 500, f"{method} {url}: HTTP {exc.code}")
        return None
    except (OSError, ValueError) as exc:
        stats.record(False, f"{method} {url}: {exc}")
        return None


def png_variant(png: bytes, text: str) -> bytes:
    """``png`` with a tEXt chunk before IEND: the same pixels in other bytes. The API
    answers a request identical to an earlier one (same bytes, same parameters) with the
    earlier job, so each submission here carries its own text."""
    chunk = b"tEXt" + b"Comment\0" + text.encode()
    crc = zlib.crc32(chunk).to_bytes(4, "big")
    new = len(chunk[4:]).to_bytes(4, "big") + chunk + crc
    end = png.rindex(b"IEND") - 4  # IEND's length field
    return png[:end] + new + png[end:]


def multipart() -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    image = png_variant(IMAGE, boundary)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in PARAMS.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="chelsea.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                 + image + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def client(eps: Endpoints, stats: Stats, stop: threading.Event) -> None:
    while not stop.is_set():
        body, ctype = multipart()
        job = request(eps, stats, "POST", "/v1/explanations", body, ctype)
        if not job:
            time.sleep(0.5)
            continue
        with stats.lock:
            stats.submitted.add(job["id"])
        while True:  # poll until finished, also after stop (no job left behind)
            time.sleep(0.5)
            doc = request(eps, stats, "GET", f"/v1/explanations/{job['id']}")
            if doc and doc.get("status") == "finished":
                with stats.lock:
                    stats.finished.add(job["id"])
                break
            if doc and doc.get("status") in ("failed", "canceled"):
                stats.record(False, f"job {job['id']} {doc.get('status')}: {doc.get('error')}")
                break
            if stop.is_set() and time.time() > stop.deadline:  # type: ignore[attr-defined]
                break


class Stack:
    def __init__(self, docker: str) -> None:
        self.docker = docker

    def compose(self, *args: str) -> str:
        return subprocess.run([self.docker, "compose", "-f", str(REPO / "docker-compose.yml"),
                               *args], check=True, capture_output=True, text=True).stdout

    def ids(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def url(self, cid: str) -> str:
        ip = subprocess.run([self.docker, "inspect", "--format",
                             "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid],
                            check=True, capture_output=True, text=True).stdout.split()[0]
        return f"http://{ip}:8000"

    def scale(self, api: int, worker: int) -> None:
        self.compose("up", "-d", "--no-build", "--no-recreate", "--scale", f"api={api}",
                     "--scale", f"worker={worker}")

    def stop(self, cid: str, grace: int) -> None:
        subprocess.run([self.docker, "stop", "-t", str(grace), cid], check=True,
                       capture_output=True)
        subprocess.run([self.docker, "rm", cid], check=True, capture_output=True)


def ready(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def wait(what: str, cond, limit: float = 300) -> None:  # noqa: ANN001
    t0 = time.time()
    while not cond():
        if time.time() - t0 > limit:
            sys.exit(f"compose-rolling: FAIL: {what} after {limit:.0f} s")
        time.sleep(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--docker", default=os.environ.get("DOCKER", "docker"))
    ap.add_argument("--pre-stop", type=float, default=5.0, help="seconds out of the endpoints "
                    "before SIGTERM (the preStop sleep)")
    ap.add_argument("--png-variant", metavar="TEXT",
                    help="only write examples/chelsea.png with TEXT in a chunk to stdout")
    args = ap.parse_args()
    if args.png_variant:
        sys.stdout.buffer.write(png_variant(IMAGE, args.png_variant))
        return 0
    os.environ["API_PORT"] = "0"  # every API replica on a port of its own
    stack, eps, stats = Stack(args.docker), Endpoints(), Stats()
    stack.scale(api=2, worker=2)
    apis = {cid: stack.url(cid) for cid in stack.ids("api")}
    wait("2 API replicas ready", lambda: all(ready(u) for u in apis.values()))
    first = next(iter(apis.values()))
    wait("2 workers alive", lambda: ((ready(first) or {}).get("workers") or {}).get("alive") == 2)
    eps.set(list(apis.values()))
    stop = threading.Event()
    stop.deadline = float("inf")  # type: ignore[attr-defined]
    threads = [threading.Thread(target=client, args=(eps, stats, stop), daemon=True)
               for _ in range(args.clients)]
    for t in threads:
        t.start()
    t_start = time.time()
    time.sleep(10)
    log = []
    for old in list(apis):  # the API: surge one, then retire one
        stack.scale(api=3, worker=2)
        new = next(c for c in stack.ids("api") if c not in apis)
        apis[new] = stack.url(new)
        wait("new API replica ready", lambda new=new: ready(apis[new]))
        eps.set([u for c, u in apis.items() if c != old])
        time.sleep(args.pre_stop)
        stack.stop(old, 30)
        del apis[old]
        log.append(f"api {old[:12]} -> {new[:12]}")
    workers = stack.ids("worker")
    for old in workers:  # the workers: a new one first, then a warm stop of an old one
        stack.scale(api=2, worker=3)
        wait("third worker alive",
             lambda: ((ready(eps.pick()) or {}).get("workers") or {}).get("alive") == 3)
        stack.stop(old, 120)
        log.append(f"worker {old[:12]} stopped warm")
    t_roll = time.time() - t_start
    time.sleep(5)
    stop.deadline = time.time() + 300  # type: ignore[attr-defined]
    stop.set()
    for t in threads:
        t.join(timeout=320)
    lost = stats.submitted - stats.finished
    print(f"compose-rolling: {'PASS' if not stats.failed and not lost else 'FAIL'} "
          f"{args.clients} clients, {stats.requests} requests, {stats.failed} failed, "
          f"{len(stats.submitted)} jobs, {len(lost)} lost; rolled 2 API replicas and "
          f"{len(workers)} workers in {t_roll:.0f} s ({'; '.join(log)})")
    for f in stats.failures[:10]:
        print("  failed:", f)
    # back to the stack's shape: one API on the published port, compose recreates it
    return 0 if not stats.failed and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
