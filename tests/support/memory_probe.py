"""Measuring a server's memory under bursts of large uploads (the memory test and
scripts/measure/api_memory.py)."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

SIDE = 6300


def big_png() -> bytes:
    img = Image.new("RGB", (SIDE, SIDE), (120, 140, 90))
    img.paste((200, 40, 40), (SIDE // 3, SIDE // 3, SIDE // 2, SIDE // 2))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0



def steady_rss(pid: int, apart: float = 0.5, tolerance_mb: float = 2.0) -> float | None:
    """The RSS once two readings ``apart`` seconds apart differ by under ``tolerance_mb``
    (the process has settled), else None: a predicate for ``wait_until``."""
    first = rss_mb(pid)
    time.sleep(apart)
    second = rss_mb(pid)
    return second if abs(second - first) < tolerance_mb else None


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)


def burst(url: str, data: bytes, n: int, seed0: int) -> list[int]:
    def one(i: int) -> int:
        r = httpx.post(f"{url}/v1/explanations", timeout=120,
                       files={"image": ("big.png", data, "image/png")},
                       data={"seed": str(seed0 + i), "window": "56", "stride": "56"})
        return r.status_code

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


