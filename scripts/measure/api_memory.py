"""API memory under bursts of large uploads: idle, peak and settled RSS of ``pda serve``.

Usage: python scripts/measure/api_memory.py [--bursts 1,8,16] [--json FILE]

Starts its own redis-server and ``pda serve`` (Redis mode, no worker: jobs only queue),
then for each burst size sends that many concurrent uploads of a 6300 x 6300 PNG (about
120 kB on disk, under the pixel cap) and samples the server's RSS every 20 ms from
/proc: the peak during the burst, and the settled RSS 3 s after it. Each upload uses a
new seed, so none is deduplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.memory_probe import SIDE, Sampler, big_png, burst, rss_mb  # noqa: E402
from tests.support.servers import RedisServer, Server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bursts", default="1,8,16")
    ap.add_argument("--json")
    args = ap.parse_args()
    data = big_png()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
        env.update(PDA_REDIS_URL=redis.url, PDA_LOG_LEVEL="warning",
                   PDA_MAX_QUEUED_PER_KEY="1000", PDA_RATE_LIMIT_PER_MINUTE="100000")
        server = Server(env, Path(tmp) / "server.log")
        try:
            pid = server.proc.pid
            time.sleep(2)
            idle = rss_mb(pid)
            print(f"upload: {len(data) / 1024:.0f} kB PNG declaring {SIDE}x{SIDE}; "
                  f"idle RSS {idle:.0f} MB")
            rows, seed = [], 0
            for n in (int(b) for b in args.bursts.split(",")):
                sampler = Sampler(pid)
                sampler.start()
                t = time.perf_counter()
                codes = burst(server.url, data, n, seed)
                seconds = time.perf_counter() - t
                seed += n
                time.sleep(3)
                sampler.running = False
                sampler.join()
                settled = rss_mb(pid)
                rows.append({"concurrent": n, "peak_mb": round(sampler.peak),
                             "settled_mb": round(settled), "idle_mb": round(idle),
                             "seconds": round(seconds, 1), "statuses": sorted(set(codes))})
                print(f"{n:>3} concurrent: peak {sampler.peak:.0f} MB, settled {settled:.0f} "
                      f"MB ({settled - idle:+.0f} MB vs idle), {seconds:.1f} s, "
                      f"statuses {sorted(set(codes))}")
        finally:
            server.stop()
            redis.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
