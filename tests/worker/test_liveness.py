"""Liveness by progress, with real Redis and real worker processes (tests/support/
slow_worker.py slows or hangs their forward batches): a slow job that keeps progressing
is never killed by a clock, a stalled attempt is rerun, a killed attempt resumes from its
checkpoint to the uninterrupted map, and a split job's merge beats and counts attempts.

Figures go to ``test-artifacts/liveness.json`` (docs/reliability.md quotes them).
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pda.jobs.queue import connect
from pda.jobs.store import JobStore
from tests.support.figures import record_figures
from tests.support.paths import CAT, ROOT
from tests.support.servers import maintenance_ran_after, worker_loaded
from tests.support.service import BIG, env_for, post, wait_for
from tests.support.waiting import Poller, wait_until

pytestmark = pytest.mark.slow
ARTIFACT = ROOT / "test-artifacts" / "liveness.json"
#: 9 x 9 windows of 24 px: 82 passes, two chunks at PDA_CHUNK_PASSES=64
SPLIT = {"window": "24", "stride": "24", "sampler": "constant", "samples": "1",
         "faithfulness": "false"}
#: the plain torch sweep: the batches slow_worker.py slows are its full images
PLAIN = {"PDA_BACKEND": "torch", "PDA_INCREMENTAL": "off"}


def record(name: str, **figures: float) -> None:
    record_figures(ARTIFACT, name, figures, digits=3)


class SlowWorker:
    """A real ``pda worker`` process, slowed as its environment says (slow_worker.py)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.slow_worker"],
                                     env=env, cwd=ROOT, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def slow_worker(tmp_path: Path):
    workers: list[SlowWorker] = []

    def start(settings, **extra: str) -> SlowWorker:
        w = SlowWorker(env_for(settings, tmp_path, **{**PLAIN, **extra}),
                       tmp_path / f"slow{len(workers)}.log")
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def old_timeout(passes: int, floor: int, rate: float) -> int:
    """The attempt timeout the removed settings gave (3x the sweep at ``rate``, floor)."""
    return max(floor, -(-3 * passes // int(rate)))


@pytest.mark.parametrize("chunk_passes", ["0", "64"], ids=["whole", "split"])
def test_a_slowed_worker_finishes_a_job_far_longer_than_the_old_timeout(
        settings, start_server, slow_worker, chunk_passes):
    # the removed settings, set as an old deployment would to shrink the timeout to 1 s
    env = {"PDA_JOB_TIMEOUT_FLOOR_SECONDS": "1", "PDA_ASSUMED_PASSES_PER_SECOND": "1000",
           "PDA_CHUNK_PASSES": chunk_passes}
    server = start_server(settings, **env)
    worker = slow_worker(settings, PDA_TEST_BATCH_DELAY="0.1", **env)
    wait_until("a loaded worker", lambda: worker_loaded(server.http), timeout=180)
    params = SPLIT if chunk_passes != "0" else BIG
    job = wait_for(server.http, post(server, params)["id"], timeout=240)
    assert job["status"] == "finished", job
    assert job["attempt"] == 1 and job["previous_attempt"] is None
    seconds = _ts(job["finished_at"]) - _ts(job["started_at"])
    passes = job["progress"]["total"]
    # a whole job: its attempt; a split one: each chunk (about half of it) had 1 s
    assert seconds > 3 * old_timeout(passes, 1, 1000)
    assert "FutureWarning: PDA_JOB_TIMEOUT_FLOOR_SECONDS is ignored" in worker.log.read_text()
    record(f"slowed_worker_{'split' if chunk_passes != '0' else 'whole'}", job_seconds=seconds,
           old_timeout_seconds=old_timeout(passes, 1, 1000), passes=passes)


def test_a_stalled_attempt_is_rerun_elsewhere(settings, start_server, slow_worker):
    env = {"PDA_STALL_SECONDS": "3", "PDA_STALE_JOB_SECONDS": "2"}
    server = start_server(settings, **env)
    store = JobStore(connect(settings))
    slow_worker(settings, PDA_TEST_BATCH_DELAY="0.1", PDA_TEST_HANG_AT="6", **env)
    wait_until("a loaded worker", lambda: worker_loaded(server.http), timeout=180)
    job_id = post(server, BIG)["id"]
    wait_until("attempt 1 progressing", lambda: store.get(job_id).progress_done > 1,
               timeout=120)
    slow_worker(settings, PDA_TEST_BATCH_DELAY="0.1", **env)  # the one that takes it over
    t = time.time()
    wait_until("attempt 2", lambda: store.get(job_id).attempt == 2, timeout=120)
    rerun_after = time.time() - t
    job = wait_for(server.http, job_id, timeout=180)
    assert job["status"] == "finished" and job["attempt"] == 2, job
    assert job["previous_attempt"]["attempt"] == 1
    assert job["previous_attempt"]["ended"] == "stalled"
    record("stalled_attempt", stall_seconds=3, stale_seconds=2,
           progressing_to_requeued_seconds=rerun_after)


def test_a_killed_attempt_resumes_from_its_checkpoint_to_the_same_map(
        settings, start_server, slow_worker, tmp_path):
    env = {"PDA_STALE_JOB_SECONDS": "3"}
    # a client polls the job throughout: not limited by the per-minute rate here
    server = start_server(settings, PDA_RATE_LIMIT_PER_MINUTE="100000", **env)
    store = JobStore(connect(settings))
    first = slow_worker(settings, PDA_TEST_BATCH_DELAY="0.3", **env)
    wait_until("a loaded worker", lambda: worker_loaded(server.http), timeout=180)
    job_id = post(server, BIG)["id"]
    total = 197
    shown = Poller(server.http, job_id)  # what a client polling the job sees, throughout
    rec = wait_until("70 %", lambda: (r := store.get(job_id)).progress_done >= 0.7 * total
                     and r, timeout=180, every=0.02)
    first.proc.kill()
    killed_at = rec.progress_done
    slow_worker(settings, PDA_TEST_BATCH_DELAY="0.3", **env)
    # the second attempt's first write says where it resumes, before it loads anything
    rec = wait_until("attempt 2's first report", lambda: (r := store.get(job_id)).attempt
                     == 2 and r.status == "running" and "resumed_from" in (
                         r.previous_attempt or {}) and r, timeout=180, every=0.02)
    resumed_at = rec.previous_attempt["resumed_from"]
    assert 0.6 * total <= resumed_at <= killed_at, (killed_at, resumed_at)
    assert rec.progress_done >= killed_at  # the count a client saw is not taken back
    job = wait_for(server.http, job_id, timeout=180)
    seen = shown.stop()
    assert job["status"] == "finished" and job["attempt"] == 2, job
    prev = job["previous_attempt"]
    assert prev["ended"] == "worker_lost" and prev["resumed_from"] == resumed_at
    # progress never went back for the client, across the kill and the rerun
    assert len(seen) > 20 and seen == sorted(seen), seen
    assert job["progress"] == {"done": total, "total": total, "fraction": 1.0}
    served = np.load(io.BytesIO(
        server.http.get(f"/v1/explanations/{job_id}/relevance.npy").content))

    # the CLI, uninterrupted, with the same parameters and the same plain torch sweep
    out = tmp_path / "cli"
    cli = subprocess.run(
        [sys.executable, "-m", "pda.cli", "explain", str(CAT), "--window", "16", "--stride",
         "16", "--sampler", "constant", "--samples", "1", "--no-faithfulness", "--backend",
         "torch", "--incremental", "off", "--batch-size", "8", "--out", str(out), "--quiet"],
        cwd=ROOT, env=env_for(settings, tmp_path), capture_output=True, text=True,
        timeout=300)
    assert cli.returncode == 0, cli.stderr
    uninterrupted = np.load(out / "relevance.npy")
    assert served.shape == uninterrupted.shape
    diff = float(np.abs(served - uninterrupted).max())
    assert diff <= 1e-5 * max(1.0, float(np.abs(uninterrupted).max())), diff
    record("resume_after_sigkill", total_passes=total, killed_at_passes=killed_at,
           resumed_at_passes=resumed_at, max_abs_map_difference=diff)


def test_a_long_merge_is_not_enqueued_again_while_it_runs(settings, start_server,
                                                          slow_worker):
    env = {"PDA_CHUNK_PASSES": "64", "PDA_STALE_JOB_SECONDS": "2"}
    server = start_server(settings, **env)
    worker = slow_worker(settings, PDA_TEST_MERGE_DELAY="8", **env)  # 4x the stale limit
    wait_until("a loaded worker", lambda: worker_loaded(server.http), timeout=180)
    job_id = post(server, SPLIT)["id"]
    job = wait_for(server.http, job_id, timeout=180)
    assert job["status"] == "finished" and job["chunks"]["total"] == 2, job
    store = JobStore(connect(settings))
    assert store.get(job_id).merge_attempts == 1
    assert "merge was abandoned" not in worker.log.read_text()


def test_a_merge_that_always_fails_ends_the_job_failed_after_the_cap(settings, start_server,
                                                                     slow_worker):
    env = {"PDA_CHUNK_PASSES": "64", "PDA_STALE_JOB_SECONDS": "2", "PDA_JOB_RETRIES": "2"}
    server = start_server(settings, **env)
    slow_worker(settings, PDA_TEST_MERGE_FAIL="1", **env)
    wait_until("a loaded worker", lambda: worker_loaded(server.http), timeout=180)
    job_id = post(server, SPLIT)["id"]
    job = wait_for(server.http, job_id, timeout=120)
    assert job["status"] == "failed", job
    assert job["error"]["detail"] == ("merging the chunks of the explanation failed after 3 "
                                      "attempts: RuntimeError: this merge always fails")
    store = JobStore(connect(settings))
    assert store.get(job_id).merge_attempts == 3
    # past the stale limit (2 s, and 1 s for a last beat of the merge): the worker's reaper
    # has seen the merge's stale entry and nothing runs it again
    maintenance_ran_after(store.r, _ts(job["finished_at"]) + 2 + 1)
    assert store.get(job_id).merge_attempts == 3 and store.running_count() == 0


def test_an_out_of_memory_job_fails_at_once_and_is_not_retried(settings, start_server,
                                                               slow_worker):
    """A MemoryError would fail again on every rerun: the job fails on its first attempt
    with the out-of-memory problem, where a crash would be retried PDA_JOB_RETRIES times."""
    server = start_server(settings)
    slow_worker(settings, PDA_TEST_OOM_AT="3")
    wait_until("a loaded worker", lambda: worker_loaded(server.http), timeout=180)
    job = wait_for(server.http, post(server, BIG)["id"], timeout=180)
    assert job["status"] == "failed" and job["attempt"] == 1, job
    assert job["error"]["type"] == "/problems/out-of-memory", job["error"]
    assert "more memory than this worker has" in job["error"]["detail"]
    assert job["previous_attempt"] is None  # never rerun


def test_a_cancel_or_a_sigterm_stops_a_job_in_its_set_up(settings, start_server,
                                                         slow_worker):
    """Every step of the set-up is a point where the attempt stops: a job canceled while it
    prepares frees its worker within a step, and SIGTERM then gives the next job back."""
    server = start_server(settings)
    worker = slow_worker(settings, PDA_TEST_STEP_DELAY="1.0")
    wait_until("a loaded worker", lambda: worker_loaded(server.http), timeout=180)
    job = post(server, BIG)
    wait_until("the job to prepare", lambda: server.http.get(
        f"/v1/explanations/{job['id']}").json()["phase"] == "preparing", timeout=60,
        every=0.05)
    t = time.monotonic()
    assert server.http.delete(f"/v1/explanations/{job['id']}").status_code == 200
    wait_until("the worker to be idle again", lambda: worker_loaded(server.http),
               timeout=30, every=0.1)
    freed = time.monotonic() - t
    assert freed < 3.0, freed  # a one-second step, then the check between steps

    second = post(server, BIG)
    wait_until("the second job to prepare", lambda: server.http.get(
        f"/v1/explanations/{second['id']}").json()["phase"] == "preparing", timeout=60,
        every=0.05)
    t = time.monotonic()
    worker.proc.terminate()
    worker.proc.wait(30)
    stopped = time.monotonic() - t
    cur = server.http.get(f"/v1/explanations/{second['id']}").json()
    assert cur["status"] == "queued" and cur["previous_attempt"]["ended"] == "shutdown", cur
    assert stopped < 5.0, stopped
    record("stop_in_set_up", cancel_frees_worker_s=freed, sigterm_exit_s=stopped)
