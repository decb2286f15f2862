"""Redis bytes and time of a whole job's sweep checkpoints (pda.jobs.attempts.JobCheckpoints).

Writes every checkpoint of a job's plan, as a worker does, into a throwaway
redis-server (tests.support.servers.RedisServer): partial sums packed by pack_partial (readouts
drawn at random: float64 noise, the worst case for the compression) and stored by the
attempt-checked transaction. Prints, per job shape, the checkpoints, the time of each
(pack + write), and MEMORY USAGE of the checkpoint key once the sweep is complete (its
peak: the key is deleted when the job ends).

    python scripts/measure/checkpoint_footprint.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pda.engine.explain import segments  # noqa: E402
from pda.engine.sweep import (
    Sweep,  # noqa: E402
    pack_partial,  # noqa: E402
)
from pda.jobs.attempts import JobCheckpoints  # noqa: E402
from pda.jobs.record import JobRecord, JobStatus  # noqa: E402
from pda.jobs.store import JobStore, checkpoint_key  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402

#: name -> (windows, passes per window, targets): the default job (224 px, window 32,
#: stride 8, 4 samples, top3), the paper preset (window 10, stride 1, 10 samples, top3)
JOBS = {"default (625 windows x 4 samples, 3 targets)": (625, 4, 3),
        "paper (46,225 windows x 10 samples, 3 targets)": (46_225, 10, 3)}


def measure(store: JobStore, name: str, n_w: int, per: int, targets: int) -> None:
    job_id = f"fp{n_w}"
    store.create(JobRecord(id=job_id, status=JobStatus.RUNNING, owner="o"), b"x", 600)
    saved = JobCheckpoints(store, store.get(job_id), 1)
    plan = segments(n_w, per)
    times, done = [], 0
    for a, b in plan:
        part = Sweep(base=torch.rand(targets, dtype=torch.float64),
                     window_means=torch.rand(b - a, targets, dtype=torch.float64),
                     positions=torch.randint(0, 224, (b - a, 2)), forward_passes=(b - a) * per,
                     window_ids=torch.arange(a, b))
        t = time.perf_counter()
        done += (b - a) * per
        assert saved.save((a, b), pack_partial(part), done)
        times.append(time.perf_counter() - t)
    nbytes = int(store.r.memory_usage(checkpoint_key(job_id), samples=0))
    print(f"{name}: {len(plan)} checkpoints of {(plan[0][1] - plan[0][0]) * per} passes; "
          f"{statistics.median(times) * 1e3:.1f} ms each (median, max "
          f"{max(times) * 1e3:.1f}); {nbytes / 1e3:.0f} kB in Redis at the end of the sweep")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        try:
            store = JobStore(redis.Redis.from_url(server.url))
            for name, shape in JOBS.items():
                measure(store, name, *shape)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
