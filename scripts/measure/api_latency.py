"""Latency of POST /v1/explanations and GET /v1/explanations/{id} against a live API.

Usage: python scripts/measure/api_latency.py [URL] [N]   (default http://127.0.0.1:8000, 200)
Start the API first, e.g. ``PDA_REDIS_URL=redis://127.0.0.1:6379/14 pda serve`` (no
worker is needed: jobs just queue). Each POST uses a new seed, so none is deduplicated.
Prints p50/p90/p99 in milliseconds for each request kind, sequential requests.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    image = (ROOT / "examples/chelsea.png").read_bytes()
    post, get, ids = [], [], []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(n):
            t = time.perf_counter()
            r = http.post("/v1/explanations", files={"image": ("c.png", image, "image/png")},
                          data={"seed": str(1_000_000 + i)})
            post.append(time.perf_counter() - t)
            r.raise_for_status()
            ids.append(r.json()["id"])
        for i in range(n):
            t = time.perf_counter()
            http.get(f"/v1/explanations/{ids[i]}").raise_for_status()
            get.append(time.perf_counter() - t)
        for job_id in ids:
            http.delete(f"/v1/explanations/{job_id}")
    out = {kind: {"n": len(xs), "p50_ms": round(pct(xs, 0.5), 2),
                  "p90_ms": round(pct(xs, 0.9), 2), "p99_ms": round(pct(xs, 0.99), 2),
                  "mean_ms": round(statistics.mean(xs) * 1000, 2)}
           for kind, xs in (("POST /v1/explanations", post), ("GET /v1/explanations/{id}", get))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
