"""Wall time of one large job against the number of workers (issue 14's benchmark).

Usage: python scripts/measure/chunk_bench.py [--window 16 --stride 4 --samples 2]
                                     [--configs 1x2:0 1x2 2x1] [--chunk-passes 1024]

Starts its own redis-server, then for each configuration ``WxT[:CHUNK_PASSES]`` starts W
real ``pda worker`` processes with T threads each (OMP/torch threads), submits
examples/chelsea.png through the API (in-process TestClient) and times submit to
finished. ``:0`` runs the job whole (PDA_CHUNK_PASSES=0). While the job runs, it reads
the partial-sum sizes Redis holds per chunk (HSTRLEN) and the chunk table (which worker
ran what); after it, the merge's own time from the worker logs. Configurations run in
rounds, interleaved, so a noisy machine hurts each alike. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from tests.support.servers import RedisServer  # noqa: E402


def start_workers(url: str, queue: str, n: int, threads: int, chunk_passes: int,
                  logdir: Path) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
    env.update(PDA_REDIS_URL=url, PDA_QUEUE_NAME=queue, PDA_LOG_LEVEL="info",
               PDA_CHUNK_PASSES=str(chunk_passes), OMP_NUM_THREADS=str(threads))
    procs = []
    for i in range(n):
        env["PDA_HEARTBEAT_FILE"] = str(logdir / f"hb{i}")
        log = (logdir / f"{queue}-w{i}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, "-m", "pda.cli", "worker"], env=env,
                                      cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    conn = redis.Redis.from_url(url)
    from pda.jobs.workers import WorkerRegistry

    registry = WorkerRegistry(conn)
    while sum(w.get("state") == "idle" for w in registry.alive()) < n:
        time.sleep(0.2)
    return procs


def run_job(client: TestClient, conn: redis.Redis, params: dict) -> dict:
    from pda import keys

    t0 = time.perf_counter()
    r = client.post("/v1/explanations", data=params, files={
        "image": ("chelsea.png", (ROOT / "examples/chelsea.png").read_bytes())})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    sizes: dict[str, int] = {}
    table: dict = {}
    while True:
        job = client.get(f"/v1/explanations/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            break
        for part in conn.hkeys(keys.partials(job_id)):
            sizes[part.decode()] = conn.hstrlen(keys.partials(job_id), part)
        raw = conn.hgetall(keys.chunks(job_id))
        if raw:
            table = {k.decode(): json.loads(v) for k, v in raw.items()}
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    assert job["status"] == "finished", job
    workers = {c.get("worker") for c in table.values()}
    return {"wall": wall, "passes": job["progress"]["total"], "chunks": job["chunks"],
            "partial_bytes": sizes, "workers_used": len(workers - {None})}


def merge_seconds(logdir: Path, queue: str) -> list[float]:
    out = []
    for log in logdir.glob(f"{queue}-w*.log"):
        out += [float(m) for m in re.findall(r"merged \d+ chunks in ([\d.]+) s", log.read_text())]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", default="16")
    ap.add_argument("--stride", default="4")
    ap.add_argument("--samples", default="2")
    ap.add_argument("--configs", nargs="+", default=["1x2:0", "1x2", "2x1"])
    ap.add_argument("--chunk-passes", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {c: [] for c in args.configs}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        try:
            from pda.settings import Settings
            from service.main import create_app

            for rnd in range(args.rounds):
                for i, cfg in enumerate(args.configs):
                    shape, _, cp = cfg.partition(":")
                    n, threads = (int(v) for v in shape.split("x"))
                    queue = f"bench{rnd}{cfg.replace(':', '_')}"
                    procs = start_workers(server.url, queue, n, threads,
                                          int(cp) if cp else args.chunk_passes, Path(tmp))
                    settings = Settings(redis_url=server.url, queue_name=queue,
                                        rate_limit_per_minute=100_000)
                    params = {"window": args.window, "stride": args.stride,
                              "samples": args.samples,
                              "seed": str(rnd * 100 + i)}  # none deduplicated
                    try:
                        with TestClient(create_app(settings, start_worker=False)) as c:
                            res = run_job(c, redis.Redis.from_url(server.url), params)
                    finally:
                        for p in procs:
                            p.terminate()
                            p.wait(30)
                    res["merge"] = merge_seconds(Path(tmp), queue)
                    results[cfg].append(res)
                    print(f"round {rnd} {cfg}: {res['wall']:.1f} s, chunks {res['chunks']}, "
                          f"workers used {res['workers_used']}", file=sys.stderr)
        finally:
            server.stop()
    base = statistics.median(r["wall"] for r in results[args.configs[0]])
    print(f"\njob: window {args.window}, stride {args.stride}, samples {args.samples} "
          f"({results[args.configs[0]][0]['passes']} passes); chunk passes "
          f"{args.chunk_passes}; {args.rounds} rounds, median\n")
    print("| workers x threads | split | wall s | passes/s | x first | chunks | "
          "KiB per chunk in Redis | merge s |")
    print("|---|---|---|---|---|---|---|---|")
    for cfg, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        sizes = [v for r in runs for v in r["partial_bytes"].values()]
        merges = [m for r in runs for m in r["merge"]]
        chunks = runs[0]["chunks"]["total"] if runs[0]["chunks"] else "-"
        print(f"| {cfg.split(':')[0]} | {'no' if cfg.endswith(':0') else 'yes'} | {wall:.1f} "
              f"| {runs[0]['passes'] / wall:.0f} | {base / wall:.2f} | {chunks} | "
              f"{statistics.mean(sizes) / 1024:.1f} | "
              f"{statistics.median(merges) if merges else 0:.2f} |" if sizes else
              f"| {cfg.split(':')[0]} | no | {wall:.1f} | {runs[0]['passes'] / wall:.0f} | "
              f"{base / wall:.2f} | - | - | - |")


if __name__ == "__main__":
    main()
