"""API memory idle and after serving results, with the API run from a given Python.

Usage: python scripts/measure/api_rss.py [--api-python /path/to/venv/bin/python]

Starts its own redis-server, ``pda serve`` (Redis mode) with ``--api-python`` (default:
this interpreter; point it at a venv made from pyproject's ``api`` extra to prove the
API runs without torch), and one ``pda worker`` with this interpreter. Measures the API's
RSS idle, then after a job's results were served: the job resource, the relevance
document (JSON grids), relevance.npy, input.png and every overlay in both views.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.memory_probe import rss_mb  # noqa: E402
from tests.support.servers import RedisServer, free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api-python", default=sys.executable)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
        env.update(PDA_REDIS_URL=redis.url, PDA_LOG_LEVEL="warning")
        port = free_port()
        api = subprocess.Popen([args.api_python, "-m", "pda.cli", "serve", "--port", str(port)],
                               env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
        worker = subprocess.Popen([sys.executable, "-m", "pda.cli", "worker"], env=env,
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            for _ in range(300):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            time.sleep(2)
            torch_loaded = subprocess.run(
                [args.api_python, "-c", "import sys, service.main; print('torch' in "
                 "sys.modules)"], capture_output=True, text=True, cwd=tmp).stdout.strip()
            idle = rss_mb(api.pid)
            job = http.post("/v1/explanations", data={"window": "32", "stride": "16",
                                                      "samples": "2"},
                            files={"image": ("c.png", (ROOT / "examples/chelsea.png")
                                             .read_bytes())}).json()
            while (job := http.get(job["links"]["self"]).json())["status"] != "finished":
                assert job["status"] in ("queued", "running"), job
                time.sleep(0.5)
            links = job["links"]
            for path in (links["relevance"], links["relevance_npy"], links["input"],
                         *links["overlays"].values()):
                assert http.get(path).status_code == 200, path
                if "overlay" in path:
                    assert http.get(path + "&view=input").status_code == 200
            time.sleep(1)
            served = rss_mb(api.pid)
        finally:
            for proc in (api, worker):
                proc.terminate()
                proc.wait(30)
            redis.stop()
    print(f"API python: {args.api_python}; torch imported by the API: {torch_loaded}")
    print(f"API RSS idle {idle:.0f} MB; after serving a finished job's results "
          f"{served:.0f} MB")


if __name__ == "__main__":
    main()
