"""Redis bytes per finished job: MEMORY USAGE of every key a job leaves behind.

Usage: python scripts/measure/redis_footprint.py [--window 16 --stride 8 --samples 4 --target top3]

Starts its own redis-server, submits examples/chelsea.png through the API (in-process
TestClient), runs the job the way a worker does (worker.tasks.run_explanation, in this
process), then sums ``MEMORY USAGE`` over the job's keys and lists the stored files.
Defaults are the service defaults (a 3-target job).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from tests.support.servers import RedisServer  # noqa: E402


def footprint(conn, job_id: str) -> dict[str, int]:
    """Bytes Redis uses for each key of job ``job_id`` (MEMORY USAGE, samples 0 = exact)."""
    keys = sorted(k.decode() for k in conn.scan_iter(f"pda:job:{job_id}*"))
    return {k: int(conn.memory_usage(k, samples=0) or 0) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser()
    for name, default in (("window", "16"), ("stride", "8"), ("samples", "4"),
                          ("target", "top3"), ("fit", "squash")):
        ap.add_argument(f"--{name}", default=default)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp) / "redis")
        try:
            from pda.settings import Settings, get_settings
            from service.main import create_app
            from worker import tasks

            settings = Settings(redis_url=redis_server.url, queue_name="footprint")
            get_settings.cache_clear()
            import os

            os.environ["PDA_REDIS_URL"] = redis_server.url
            os.environ["PDA_QUEUE_NAME"] = "footprint"
            with TestClient(create_app(settings, start_worker=False)) as c:
                params = {k: getattr(args, k) for k in ("window", "stride", "samples",
                                                        "target", "fit")}
                r = c.post("/v1/explanations", data=params, files={
                    "image": ("chelsea.png", (ROOT / "examples/chelsea.png").read_bytes())})
                job_id = r.json()["id"]
                print(f"job {job_id}: {params}", file=sys.stderr)
                assert tasks.run_explanation(job_id, 1) == "finished"
                conn = c.app.state.pda.conn
                sizes = footprint(conn, job_id)
                files = {k.decode(): len(v) for k, v in
                         conn.hgetall(f"pda:job:{job_id}:files").items()}
                served = len(c.get(f"/v1/explanations/{job_id}/relevance").content)
        finally:
            redis_server.stop()
    for key, n in sizes.items():
        print(f"{key:<50} {n / 1024:9.1f} kB")
    print(f"{'total':<50} {sum(sizes.values()) / 1024:9.1f} kB")
    print("stored files: " + ", ".join(f"{k} {v / 1024:.1f} kB" for k, v in files.items()))
    print(f"result.json as served (rendered on request): {served / 1024:.0f} kB")


if __name__ == "__main__":
    main()
