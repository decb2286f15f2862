"""Batches and interactive work side by side: latency, turns, and the API's memory.

Usage: python scripts/measure/batch_fairness.py [--workers 1] [--items 200] [--singles 3]

Starts its own redis-server, ``pda serve`` (Redis mode, API keys ``k1,k2``) and
``--workers`` ``pda worker`` processes, all with this interpreter, and measures:

1. single-job latency (submit to finished, key k2) with no batch, then while a batch of
   ``--items`` images of key k1 runs, then with no batch again (interleaved phases);
2. two keys' batches side by side (8 items each, submitted one after the other): the
   order in which their items started, and when each batch ended;
3. the API's RSS (sampled every 50 ms) idle, while the ``--items``-image batch is uploaded
   and stored, and while its results.zip is streamed (and the archive's size).

The jobs are small (window 56, stride 56, constant sampler, 1 sample: 17 forward passes),
so that a many-image batch fits a few minutes; the ratios are what matter.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.memory_probe import rss_mb  # noqa: E402
from tests.support.servers import RedisServer, free_port  # noqa: E402

PARAMS = {"window": "56", "stride": "56", "sampler": "constant", "samples": "1",
          "faithfulness": "false"}
K1, K2 = {"X-API-Key": "k1"}, {"X-API-Key": "k2"}


def images(n: int, seed: int) -> list[bytes]:
    """``n`` different photos (the example, shifted and marked), PNG."""
    base = Image.open(ROOT / "examples/chelsea.png").convert("RGB")
    out = []
    for k in range(n):
        img = base.rotate((k % 7) - 3, translate=(k % 5, seed % 5))
        img.putpixel((k % img.width, seed), (k % 256, seed % 256, 7))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Sampler:
    """The API's RSS every 50 ms, in a thread; ``peak()`` since the last ``reset()``."""

    def __init__(self, pid: int) -> None:
        self.pid, self.values, self._stop = pid, [], threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.values.append(rss_mb(self.pid))
            except OSError:  # the API has stopped
                return
            time.sleep(0.05)

    def reset(self) -> None:
        self.values = []

    def peak(self) -> float:
        return max(self.values or [rss_mb(self.pid)])

    def stop(self) -> None:
        self._stop.set()


def wait(http: httpx.Client, path: str, headers: dict, done=("finished", "failed",
                                                             "canceled")) -> dict:
    while (body := http.get(path, headers=headers).json())["status"] not in done:
        time.sleep(0.2)
    return body


def single(http: httpx.Client, k: int) -> float:
    """Seconds from submit to finished of one small job of key k2."""
    t = time.monotonic()
    job = http.post("/v1/explanations", data=PARAMS, headers=K2,
                    files={"image": ("s.png", images(1, 100 + k)[0])}).json()
    job = wait(http, job["links"]["self"], K2)
    assert job["status"] == "finished", job
    return time.monotonic() - t


def post_batch(http: httpx.Client, photos: list[bytes], headers: dict) -> dict:
    files = [("image", (f"{i}.png", p, "image/png")) for i, p in enumerate(photos)]
    r = http.post("/v1/batches", data=PARAMS, files=files, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--singles", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
        env.update(PYTHONPATH=str(ROOT), PDA_REDIS_URL=redis.url, PDA_LOG_LEVEL="warning",
                   PDA_API_KEYS="k1,k2",
                   PDA_RATE_LIMIT_PER_MINUTE="100000", PDA_BATCH_MAX_OPEN_ITEMS="100000")
        port = free_port()
        api = subprocess.Popen([sys.executable, "-m", "pda.cli", "serve", "--port",
                                str(port)], env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
        workers = [subprocess.Popen([sys.executable, "-m", "pda.cli", "worker"], env=env,
                                    cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT)
                   for _ in range(args.workers)]
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        try:
            for _ in range(600):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            single(http, 0)  # warm: the model's rate measured, the first job's costs paid
            rss = Sampler(api.pid)
            idle = rss.peak()
            photos = images(args.items, 1)
            upload = sum(len(p) for p in photos)

            alone_1 = [single(http, 1 + k) for k in range(args.singles)]
            rss.reset()
            t = time.monotonic()
            big = post_batch(http, photos, K1)
            submit_s = time.monotonic() - t
            submit_peak = rss.peak()
            del photos
            beside = [single(http, 10 + k) for k in range(args.singles)]
            waiting = http.get(big["links"]["self"], headers=K1).json()["counts"]["queued"]
            t = time.monotonic()
            big = wait(http, big["links"]["self"], K1, ("finished", "canceled"))
            batch_s = time.monotonic() - t
            alone_2 = [single(http, 20 + k) for k in range(args.singles)]

            rss.reset()
            t = time.monotonic()
            size = 0
            with http.stream("GET", big["links"]["results"], headers=K1) as r:
                for chunk in r.iter_bytes():
                    size += len(chunk)
            zip_s = time.monotonic() - t
            zip_peak = rss.peak()

            # two keys side by side
            a = post_batch(http, images(8, 2), K1)
            b = post_batch(http, images(8, 3), K2)
            a = wait(http, a["links"]["self"], K1, ("finished",))
            b = wait(http, b["links"]["self"], K2, ("finished",))
            starts = []
            for who, batch, h in (("a", a, K1), ("b", b, K2)):
                for item in batch["items"]:
                    job = http.get(item["links"]["self"], headers=h).json()
                    starts.append((job["started_at"], who))
            order = "".join(w for _, w in sorted(starts))
            rss.stop()
        finally:
            for proc in (api, *workers):
                proc.terminate()
                proc.wait(60)
            redis.stop()
    load = os.getloadavg()
    print(f"workers {args.workers}; batch of {args.items} images, {upload / 1e6:.1f} MB; "
          f"jobs of 17 forward passes; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")
    print("| single job, key k2 | median s | runs |")
    print("|---|---|---|")
    for name, xs in (("no batch (before)", alone_1), (f"beside the {args.items}-image batch "
                     f"({waiting} items still queued after)", beside),
                     ("no batch (after)", alone_2)):
        print(f"| {name} | {statistics.median(xs):.2f} | "
              f"{', '.join(f'{x:.2f}' for x in xs)} |")
    print(f"batch: submit {submit_s:.1f} s, then {batch_s:.1f} s to finish "
          f"({big['counts']}); {batch_s / args.items:.2f} s per item")
    print(f"two keys, 8 items each, submitted a then b: start order {order}")
    print(f"API RSS: idle {idle:.0f} MB; peak while the batch was uploaded and stored "
          f"{submit_peak:.0f} MB; peak while results.zip streamed {zip_peak:.0f} MB "
          f"({size / 1e6:.1f} MB in {zip_s:.1f} s)")


if __name__ == "__main__":
    main()
