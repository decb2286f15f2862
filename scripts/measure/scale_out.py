"""Scale-out at the same CPU share per worker: 1, 2, 4 ... real workers, each held to
``--quota`` of one core by a CPU cgroup, on one split job or on a set of small jobs.

Usage (as root, where /sys/fs/cgroup/cpu or a cgroup v2 hierarchy is writable):
    python scripts/measure/scale_out.py --job paper --stride 10 --quota 0.2 --workers 1,2,4
    python scripts/measure/scale_out.py --job batch --jobs 8 --window 32 --stride 16 --samples 2

A machine with few cores cannot show more workers' worth of compute, but it can show what
coordinating them costs: every worker gets the same share of a core (a CPU cgroup each:
cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, or v2 ``cpu.max``; pinned with
``taskset`` to one CPU, so OpenVINO's and torch's pools have one thread), so n workers
have n times one worker's compute and the speed-up against one worker at the same share
measures only the coordination: planning, queue waits, the serial merge, unequal chunks.

``--job paper``: one split job with the paper's settings (window 10, padding 2, 10
samples) at ``--stride`` (the paper's stride 1 is 462,251 passes: days at a fifth of a
core), cut into chunks of ``--chunk-passes``. ``--job batch``: ``--jobs`` independent
small jobs (``--window/--stride/--samples``), each a whole job, submitted at once (a
stand-in for a batch: ``POST /v1/batches`` is not in this branch). ``--faithfulness``
keeps the scores on (their 590 passes run in the merge, serially).

The script starts its own redis-server and real ``pda worker`` processes, submits through
the API (in-process TestClient, closed after the submit), then polls the job records
directly in Redis once a second (its own commands are subtracted from the traffic). Wall
time is submit to the last ``finished_at``. Redis traffic is the delta of ``INFO stats``
(total_net_input_bytes, total_net_output_bytes) and ``INFO commandstats`` over the run:
everything the API and the workers sent, idle beats included; ``--idle-seconds`` then
measures the idle beats alone. Per chunk it reads RQ's own times (enqueued, started,
ended) to split the job's critical path into planning, sweep, waiting for the merge and
the merge. Worker counts run in rounds, interleaved. Prints a markdown table; ``--json``
writes every number.
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
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.support.servers import RedisServer  # noqa: E402

PERIOD_US = 100_000


class CpuQuota:
    """One CPU cgroup holding processes to ``quota`` cores (v1 cpu controller, or v2)."""

    V1 = Path("/sys/fs/cgroup/cpu")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self, name: str, quota: float) -> None:
        if (self.V1 / "cpu.cfs_quota_us").exists():
            self.path, self.v2 = self.V1 / name, False
        elif (self.V2 / "cgroup.controllers").exists():
            self.path, self.v2 = self.V2 / name, True
        else:
            raise SystemExit("no writable CPU cgroup hierarchy (/sys/fs/cgroup/cpu or v2)")
        self.path.mkdir(exist_ok=True)
        us = int(quota * PERIOD_US)
        # a high weight as well: on a busy machine each group still gets its whole quota
        # (the quota is the limit that binds, not the neighbours; cpu.stat's throttling
        # shows it), and never more than the quota
        if self.v2:
            (self.path / "cpu.max").write_text(f"{us} {PERIOD_US}")
            (self.path / "cpu.weight").write_text("1000")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(us))
            (self.path / "cpu.shares").write_text("10240")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))  # every thread of the process

    def stat(self) -> dict[str, int]:
        out = {}
        for line in (self.path / "cpu.stat").read_text().splitlines():
            k, v = line.split()
            out[k] = int(v)
        return out

    def remove(self) -> None:
        for _ in range(50):  # the processes have exited: the group empties at once
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"could not remove {self.path}", file=sys.stderr)


def start_workers(url: str, queue: str, n: int, chunk_passes: int, tmp: Path,
                  quotas: list[CpuQuota]) -> list[subprocess.Popen]:
    """n real ``pda worker`` processes, one thread each, pinned round-robin to the CPUs;
    each joins its CPU group once it has loaded its models (idle in the registry)."""
    from pda.jobs.workers import WorkerRegistry

    env = {k: v for k, v in os.environ.items() if not k.startswith("PDA_")}
    env.update(PDA_REDIS_URL=url, PDA_QUEUE_NAME=queue, PDA_LOG_LEVEL="info",
               PDA_CHUNK_PASSES=str(chunk_passes), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PDA_BACKEND_CACHE_DIR=str(tmp / "backend-cache"))
    cpus = sorted(os.sched_getaffinity(0))
    procs = []
    for i in range(n):
        env["PDA_HEARTBEAT_FILE"] = str(tmp / f"hb-{queue}-{i}")
        log = (tmp / f"{queue}-w{i}.log").open("w")
        procs.append(subprocess.Popen(
            ["taskset", "-c", str(cpus[i % len(cpus)]), sys.executable, "-m", "pda.cli",
             "worker"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    registry = WorkerRegistry(redis.Redis.from_url(url))
    pids = {p.pid for p in procs}
    deadline = time.time() + 600
    while sum(w.get("state") == "idle" and w.get("pid") in pids
              for w in registry.alive()) < n:
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"workers did not start: see {tmp}/{queue}-w*.log")
        time.sleep(0.5)
    for p, q in zip(procs, quotas, strict=False):
        q.add(p.pid)
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def redis_stats(conn: redis.Redis) -> dict[str, int]:
    info = conn.info("stats")
    cmds = conn.info("commandstats")
    out = {"in": info["total_net_input_bytes"], "out": info["total_net_output_bytes"],
           "commands": info["total_commands_processed"]}
    out.update({f"cmd:{k.removeprefix('cmdstat_')}": v["calls"] for k, v in cmds.items()})
    return out


def poll_cost(conn: redis.Redis, key: str) -> tuple[float, float]:
    """Bytes in and out of one poll (an HMGET of a job record), measured."""
    conn.config_resetstat()
    for _ in range(50):
        conn.hmget(key, "status", "finished_at")
    s = conn.info("stats")  # counts itself: negligible against 50 polls
    return s["total_net_input_bytes"] / 50, s["total_net_output_bytes"] / 50


def iso(ts: str | None) -> float | None:
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def wait_finished(conn: redis.Redis, job_ids: list[str], timeout: float) -> tuple[dict, int]:
    from pda import keys

    polls, deadline = 0, time.time() + timeout
    ends: dict[str, float] = {}
    while len(ends) < len(job_ids):
        for j in job_ids:
            if j in ends:
                continue
            status, finished = conn.hmget(keys.job(j), "status", "finished_at")
            polls += 1
            status = json.loads(status) if status else None
            if status not in ("queued", "running", None):
                if status != "finished":
                    raise SystemExit(f"job {j} ended {status}")
                ends[j] = iso(json.loads(finished))
        if time.time() > deadline:
            raise SystemExit(f"timeout: {len(ends)} of {len(job_ids)} jobs finished")
        time.sleep(1.0)
    return ends, polls


def rq_times(conn: redis.Redis, rq_id: str) -> dict[str, float | None]:
    raw = conn.hmget(f"rq:job:{rq_id}", "enqueued_at", "started_at", "ended_at", "worker_name")
    times = [iso(v.decode()) if v else None for v in raw[:3]]
    return {"enqueued": times[0], "started": times[1], "ended": times[2],
            "worker": raw[3].decode() if raw[3] else None}


def critical_path(conn: redis.Redis, job_id: str, t0: float, end: float) -> dict:
    """Planning, sweep, merge wait and merge of a split job, from RQ's own times."""
    # the chunk table is gone once the job finished: RQ's records of the chunks remain
    # (result_ttl 600 s); the last attempt of each chunk
    latest: dict[int, tuple[int, str]] = {}
    for key in conn.scan_iter(f"rq:job:{job_id}-c*-a*"):
        m = re.fullmatch(rf"rq:job:{re.escape(job_id)}-c(\d+)-a(\d+)", key.decode())
        if m:
            part, att = int(m[1]), int(m[2])
            if att >= latest.get(part, (0, ""))[0]:
                latest[part] = (att, key.decode().removeprefix("rq:job:"))
    chunks = [rq_times(conn, rid) | {"part": i} for i, (_, rid) in sorted(latest.items())]
    merge_ids = [k.decode().removeprefix("rq:job:")
                 for k in conn.scan_iter(f"rq:job:{job_id}-cmerge-a*")]
    merge = rq_times(conn, sorted(merge_ids)[-1]) if merge_ids else {}
    first = min(c["enqueued"] for c in chunks)
    last = max(c["ended"] for c in chunks)
    runs = [c["ended"] - c["started"] for c in chunks]
    by_worker: dict[str, list] = {}
    for c in chunks:
        by_worker.setdefault(c["worker"], []).append(c)
    gaps = []  # a worker's idle time between its chunks (queue and coordination)
    for cs in by_worker.values():
        cs.sort(key=lambda c: c["started"])
        gaps += [b["started"] - a["ended"] for a, b in zip(cs, cs[1:], strict=False)]
    return {
        "chunks": len(chunks), "workers_used": len(by_worker),
        "planning_s": first - t0, "sweep_s": last - first,
        "merge_wait_s": (merge["started"] - last) if merge.get("started") else None,
        "merge_s": (merge["ended"] - merge["started"]) if merge.get("ended") else None,
        "finish_after_merge_s": (end - merge["ended"]) if merge.get("ended") else None,
        "chunk_run_s": [round(r, 3) for r in runs],
        "chunk_first_start_wait_s": min(c["started"] for c in chunks) - first,
        "gaps_s": [round(g, 3) for g in gaps],
        "chunks_per_worker": sorted(len(v) for v in by_worker.values()),
    }


def merge_logged(tmp: Path, queue: str) -> list[float]:
    out = []
    for log in tmp.glob(f"{queue}-w*.log"):
        out += [float(m) for m in re.findall(r"merged \d+ chunks in ([\d.]+) s",
                                             log.read_text())]
    return out


def one_run(args, server: RedisServer, tmp: Path, n: int, rnd: int,
            quotas: list[CpuQuota]) -> dict:
    from fastapi.testclient import TestClient

    from pda import keys
    from pda.settings import Settings
    from service.main import create_app

    queue = f"so{rnd}w{n}{args.job}"
    conn = redis.Redis.from_url(server.url)
    procs = start_workers(server.url, queue, n, args.chunk_passes, tmp, quotas[:n])
    try:
        settings = Settings(redis_url=server.url, queue_name=queue,
                            rate_limit_per_minute=100_000, max_queued_per_key=10_000)
        image = (ROOT / "examples/chelsea.png").read_bytes()
        if args.job == "paper":
            requests = [{"preset": "paper", "stride": str(args.stride)}]
        else:
            requests = [{"window": str(args.window), "stride": str(args.stride),
                         "samples": str(args.samples)} for _ in range(args.jobs)]
        for i, r in enumerate(requests):
            r["seed"] = str(rnd * 1000 + n * 100 + i)  # none deduplicated
            r["faithfulness"] = "true" if args.faithfulness else "false"
        poll_in, poll_out = poll_cost(conn, keys.job("none"))
        cpu0 = [q.stat() for q in quotas[:n]]
        load0 = os.getloadavg()
        with TestClient(create_app(settings, start_worker=False)) as c:
            conn.config_resetstat()
            t0 = time.time()
            ids = []
            for r in requests:
                resp = c.post("/v1/explanations", data=r,
                              files={"image": ("chelsea.png", image)})
                assert resp.status_code == 202, resp.text
                ids.append(resp.json()["id"])
            passes = sum(c.get(f"/v1/explanations/{j}").json()["progress"]["total"]
                         for j in ids)
        ends, polls = wait_finished(conn, ids, args.timeout)
        stats = redis_stats(conn)
        load1 = os.getloadavg()
        cpu1 = [q.stat() for q in quotas[:n]]
        end = max(ends.values())
        res = {"workers": n, "round": rnd, "wall_s": end - t0, "passes": passes,
               "jobs": len(ids), "load_before": load0, "load_after": load1,
               "polls": polls}
        # the poller's own commands (one HMGET each, plus the two INFO reads)
        stats["in"] -= round(polls * poll_in)
        stats["out"] -= round(polls * poll_out)
        stats["commands"] -= polls + 2
        stats["cmd:hmget"] = stats.get("cmd:hmget", 0) - polls
        res["redis"] = stats
        res["throttled_s"] = [(b["throttled_time"] - a["throttled_time"]) / 1e9
                              for a, b in zip(cpu0, cpu1, strict=True)]
        if args.job == "paper":
            res["path"] = critical_path(conn, ids[0], t0, end)
            res["merge_logged_s"] = merge_logged(tmp, queue)
        if args.idle_seconds:
            conn.config_resetstat()
            time.sleep(args.idle_seconds)
            idle = redis_stats(conn)
            res["idle_per_s"] = {k: idle[k] / args.idle_seconds
                                 for k in ("in", "out", "commands")}
    finally:
        stop_workers(procs)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", choices=("paper", "batch"), default="paper")
    ap.add_argument("--quota", type=float, default=0.2, help="cores per worker")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--stride", type=int, default=None,
                    help="paper: 10 (default: 484 windows, 8 chunks); batch: as --window")
    ap.add_argument("--chunk-passes", type=int, default=640,
                    help="PDA_CHUNK_PASSES (the paper's window: 640 = one block of 64 "
                    "windows x 10 samples)")
    ap.add_argument("--jobs", type=int, default=8, help="batch: how many jobs")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--faithfulness", action="store_true", help="keep the scores on")
    ap.add_argument("--idle-seconds", type=float, default=0)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.stride is None:
        args.stride = 10 if args.job == "paper" else args.window
    counts = [int(v) for v in args.workers.split(",")]
    quotas = [CpuQuota(f"pda-scaleout-w{i}", args.quota) for i in range(max(counts))]
    results: dict[int, list[dict]] = {n: [] for n in counts}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = RedisServer(Path(tmp) / "redis")
            try:
                for rnd in range(args.rounds):
                    for n in counts:
                        res = one_run(args, server, Path(tmp), n, rnd, quotas)
                        results[n].append(res)
                        print(f"round {rnd} workers {n}: {res['wall_s']:.1f} s, load "
                              f"{res['load_before'][0]:.2f} -> {res['load_after'][0]:.2f}",
                              file=sys.stderr)
                        if args.json:
                            args.json.write_text(json.dumps(
                                {"args": {k: str(v) for k, v in vars(args).items()},
                                 "results": results}, indent=1))
            finally:
                server.stop()
    finally:
        for q in quotas:
            q.remove()
    report(args, results)


def report(args, results: dict[int, list[dict]]) -> None:
    counts = list(results)
    wall = {n: statistics.median(r["wall_s"] for r in results[n]) for n in counts}
    base = wall[counts[0]] * counts[0]  # one worker's time (the first count: 1)
    first = results[counts[0]][0]
    unit = "chunk" if args.job == "paper" else "job"
    print(f"\njob: {args.job}, {first['jobs']} job(s), {first['passes']} passes; quota "
          f"{args.quota} core per worker; {args.rounds} round(s), median\n")
    head = ("| workers | wall s | speed-up | efficiency | "
            + ("planning s | sweep s | merge wait s | merge s | chunks per worker | "
               if args.job == "paper" else "")
            + f"Redis commands per {unit} | Redis KiB in/out per {unit} | load 1 min |")
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for n in counts:
        runs = results[n]
        per = [(r["path"]["chunks"] if args.job == "paper" else r["jobs"]) for r in runs]
        pairs = list(zip(runs, per, strict=True))
        cmds = statistics.median(r["redis"]["commands"] / p for r, p in pairs)
        kin = statistics.median(r["redis"]["in"] / p / 1024 for r, p in pairs)
        kout = statistics.median(r["redis"]["out"] / p / 1024 for r, p in pairs)
        speed = base / wall[n]
        row = f"| {n} | {wall[n]:.1f} | {speed:.2f} | {speed / n:.2f} | "
        if args.job == "paper":
            p = [r["path"] for r in runs]

            def med(k: str, p: list[dict] = p) -> float:
                return statistics.median(x[k] for x in p if x[k] is not None)
            row += (f"{med('planning_s'):.1f} | {med('sweep_s'):.1f} | "
                    f"{med('merge_wait_s'):.2f} | {med('merge_s'):.1f} | "
                    f"{p[0]['chunks_per_worker']} | ")
        loads = [r["load_before"][0] for r in runs] + [r["load_after"][0] for r in runs]
        row += (f"{cmds:.0f} | {kin:.1f} / {kout:.1f} | {min(loads):.2f}-{max(loads):.2f} |")
        print(row)


if __name__ == "__main__":
    main()
