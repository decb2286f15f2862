"""Faults provoked for real: workers stopped and killed mid-sweep, Redis restarted and
hung under a running API, jobs whose model breaks, results past their lifetime.

Recovery times are printed and written to ``test-artifacts/faults.json``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest
import redis

from pda.jobs.queue import connect
from pda.jobs.store import JobStore
from tests.support.figures import record
from tests.support.paths import CAT
from tests.support.servers import RedisServer, worker_loaded
from tests.support.service import BIG, make_settings, post, wait_for
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
PNG = CAT.read_bytes()
TINY = {"window": "56", "stride": "56", "sampler": "constant", "samples": "1",
        "faithfulness": "false"}


@pytest.fixture
def start_worker(start_worker):
    """Workers on plain torch (no OpenVINO, no incremental inference): the faults below are
    timed against a sweep that lasts seconds on one torch thread (the faster paths finish
    BIG before a kill can land)."""
    def start(settings, **extra: str):
        return start_worker(settings, **{"PDA_BACKEND": "torch", "PDA_INCREMENTAL": "off",
                                         **extra})
    return start


class Watcher(threading.Thread):
    """Polls a job the whole time, so the test can check that its status never lied."""

    def __init__(self, http, job_id: str) -> None:
        super().__init__(daemon=True)
        self.http, self.job_id, self.seen, self.done = http, job_id, [], threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                r = self.http.get(f"/v1/explanations/{self.job_id}")
                if r.status_code == 200:
                    j = r.json()
                    self.seen.append((j["status"], j["attempt"], j["progress"]["done"]))
            except Exception:  # noqa: BLE001 (the API may be briefly unreachable)
                pass
            time.sleep(0.1)

    def stop(self, final: dict) -> list[tuple[str, int, int]]:
        """What was seen, ending with ``final`` (the job as the test last read it)."""
        self.done.set()
        self.join(5)
        return [*self.seen, (final["status"], final["attempt"], final["progress"]["done"])]


def assert_never_lied(seen: list[tuple[str, int, int]], final_attempt: int) -> None:
    statuses = [s for s, _, _ in seen]
    assert statuses[-1] == "finished"
    first_end = statuses.index("finished")
    assert set(statuses[:first_end]) <= {"queued", "running"}, statuses
    assert set(statuses[first_end:]) == {"finished"}
    attempts = [a for _, a, _ in seen]
    assert attempts == sorted(attempts) and attempts[-1] == final_attempt


def worker_of(store: JobStore, job_id: str, attempt: int, workers) -> object:
    """The worker process running ``attempt`` of the job, once it has made progress."""
    def running():
        rec = store.get(job_id)
        return (rec if rec["status"] == "running" and rec["attempt"] == attempt
                and rec["progress_done"] > 0 else None)
    rec = wait_until(f"attempt {attempt} running", running, timeout=180)
    pid = int(rec["worker"].rsplit(":", 1)[1])
    return next(w for w in workers if w.proc.pid == pid)


def test_a_worker_stopped_then_one_killed_mid_sweep_lose_nothing(settings, start_server,
                                                                 start_worker):
    env = {"PDA_STALE_JOB_SECONDS": "4"}
    server = start_server(settings, **env)
    workers = [start_worker(settings, **env) for _ in range(2)]
    store = JobStore(connect(settings))
    big = post(server, BIG)["id"]
    watch = Watcher(server.http, big)
    small = [post(server, {**TINY, "seed": str(s)})["id"] for s in range(2)]

    # SIGTERM: the sweep stops at its next batch, the job goes back to the queue's front
    first = worker_of(store, big, 1, workers)
    t = time.time()
    assert first.stop(signal.SIGTERM, timeout=60) == 0
    warm_exit = time.time() - t
    rec = store.get(big)
    assert rec["attempt"] == 2 and rec["status"] in ("queued", "running"), rec
    workers.append(start_worker(settings, **env))  # the spare that will reap the next one

    # SIGKILL: no goodbye; the job's heartbeat stops and another worker reruns it
    victim = worker_of(store, big, 2, workers)
    victim.proc.kill()
    t = time.time()
    worker_of(store, big, 3, workers)
    rerun_after = time.time() - t
    job = wait_for(server.http, big, timeout=240)
    finished_after = time.time() - t
    assert job["status"] == "finished" and job["attempt"] == 3
    assert job["progress"] == {"done": 197, "total": 197, "fraction": 1.0}
    assert_never_lied(watch.stop(job), 3)
    for job_id in small:
        done = wait_for(server.http, job_id, timeout=120)
        assert done["status"] == "finished" and done["attempt"] == 1
    assert server.http.get(f"/v1/explanations/{big}/relevance").json()["stats"][
        "forward_passes"] == 197
    assert store.running_count() == 0 and store.queued_since(0) == []
    record("worker_sigterm_then_sigkill", warm_shutdown_seconds=warm_exit,
           kill_to_rerun_seconds=rerun_after, kill_to_finished_seconds=finished_after)


def assert_503(r, started: float) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == "/problems/store-unavailable" and r.headers["retry-after"]
    assert time.time() - started < 5  # answered, not hung


@pytest.fixture
def own_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis", appendonly=True)
    yield server
    if server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_redis_restarted_or_hung_under_a_running_api(own_redis, start_server, start_worker):
    settings = make_settings(redis_url=own_redis.url)
    server = start_server(settings, PDA_REDIS_TIMEOUT_SECONDS="1")
    start_worker(settings)
    http = server.http
    wait_until("a loaded worker", lambda: worker_loaded(http), timeout=120)
    store = JobStore(connect(settings))
    job = post(server, BIG)["id"]
    wait_until("running", lambda: store.get(job)["progress_done"] > 0, timeout=120)

    own_redis.stop()  # down while the sweep runs
    down = time.time()
    t = time.time()
    assert_503(http.get(f"/v1/explanations/{job}"), t)
    t = time.time()
    assert_503(http.post("/v1/explanations", files={"image": ("x.png", PNG)}, data=TINY), t)
    ready = http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreach")
    assert http.get("/livez").status_code == 200
    assert "pda_store_up 0.0" in http.get("/metrics").text
    time.sleep(max(0.0, 3 - (time.time() - down)))

    own_redis.start()
    up = time.time()
    wait_until("the API to answer", lambda: http.get(f"/v1/explanations/{job}").status_code
               == 200, timeout=30)
    api_back = time.time() - up
    wait_until("ready again", lambda: http.get("/readyz").status_code == 200, timeout=60)
    ready_back = time.time() - up
    finished = wait_for(http, job, timeout=180)
    assert finished["status"] == "finished", finished  # the sweep's result was kept
    after = post(server, {**TINY, "seed": "5"})["id"]
    assert wait_for(http, after, timeout=120)["status"] == "finished"

    os.kill(own_redis.proc.pid, signal.SIGSTOP)  # hung, not gone: timeouts must fire
    try:
        t = time.time()
        assert_503(http.get(f"/v1/explanations/{job}"), t)
        hung_answer = time.time() - t
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    assert wait_until("recovery", lambda: http.get(f"/v1/explanations/{job}").status_code
                      == 200, timeout=30)

    # Redis back without its data (no persistence): old jobs are unknown, not errors, and
    # the idle worker puts itself back on the worker list by itself
    redis.Redis.from_url(own_redis.url).flushall()
    lost = time.time()
    assert http.get(f"/v1/explanations/{job}").status_code == 404
    wait_until("the worker listed again after data loss", lambda: worker_loaded(http),
               timeout=30)
    relisted = time.time() - lost
    fresh = post(server, {**TINY, "seed": "6"})["id"]
    assert wait_for(http, fresh, timeout=120)["status"] == "finished"
    record("redis_restart", downtime_seconds=up - down, api_answers_again_seconds=api_back,
           ready_again_seconds=ready_back, hung_redis_503_seconds=hung_answer,
           job_attempts=float(finished["attempt"]), worker_relisted_seconds=relisted)


def test_a_job_whose_queue_message_was_lost_is_queued_again(settings, client, monkeypatch):
    from pda.jobs.lifecycle import requeue_lost
    from pda.jobs.queue import rq_job_id
    from pda.settings import get_settings
    from worker.tasks import run_explanation

    r = client.post("/v1/explanations", files={"image": ("x.png", PNG, "image/png")},
                    data=TINY)
    job_id = r.json()["id"]
    state = client.app.state.pda
    lost = state.queue.fetch_job(rq_job_id(job_id, 1))
    state.queue.remove(lost)  # the message vanishes (an append-only file that missed it)
    lost.delete()
    monkeypatch.setenv("PDA_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("PDA_QUEUE_NAME", settings.queue_name)
    monkeypatch.setenv("PDA_STALE_JOB_SECONDS", "0.01")
    get_settings.cache_clear()

    def queued_long() -> bool:  # what requeue_lost looks at: queued past the stale limit
        return job_id in state.store.queued_since(0.01)

    wait_until("queued past the stale limit", queued_long, timeout=5, every=0.01)
    assert requeue_lost(get_settings(), state.store) == [job_id]
    assert requeue_lost(get_settings(), state.store) == []  # once, not per worker
    rec = state.store.get(job_id)
    assert rec["status"] == "queued" and rec["attempt"] == 2
    assert state.queue.job_ids == [rq_job_id(job_id, 2)]
    # a late copy of the old message would not run it a second time
    assert run_explanation(job_id, 1).startswith("skipped")
    # nor would a message taken by a worker that died before claiming the job
    state.queue.fetch_job(rq_job_id(job_id, 2)).set_status("failed")
    wait_until("queued past the stale limit", queued_long, timeout=5, every=0.01)
    assert requeue_lost(get_settings(), state.store) == [job_id]
    assert state.store.get(job_id)["attempt"] == 3


def write_models(folder: Path) -> None:
    """Three tiny TorchScript models (32 x 32 input, 4 classes): good, to-be-broken, crashy."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean((2, 3)))

    class Crashy(Tiny):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 2:
                raise RuntimeError("crashy refuses batches of more than 2 images")
            return self.fc(x.mean((2, 3)))

    folder.mkdir(exist_ok=True)
    side = json.dumps({"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3})
    for name, module in (("tiny", Tiny()), ("broken", Tiny()), ("crashy", Crashy())):
        with warnings.catch_warnings():  # TorchScript is deprecated, and supported on purpose
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(module).save(str(folder / f"{name}.pt"))
        (folder / f"{name}.json").write_text(side)


SMALL_TINY = {"window": "8", "stride": "8", "sampler": "constant", "samples": "1"}


def test_a_failing_job_ends_failed_clearly_and_the_worker_goes_on(settings, start_server,
                                                                  start_worker, tmp_path):
    models = tmp_path / "models"
    write_models(models)
    env = {"PDA_MODEL_DIR": str(models), "PDA_WORKER_MODELS": "", "PDA_JOB_RETRIES": "1"}
    server = start_server(settings, **env)
    broken = post(server, {**SMALL_TINY, "model": "broken"})["id"]  # validated: it loads
    (models / "broken.pt").write_bytes(b"\x00garbage" * 64)  # then breaks on disk
    crashy = post(server, {**SMALL_TINY, "model": "crashy"})["id"]
    good = post(server, {**SMALL_TINY, "model": "tiny"})["id"]
    t = time.time()
    start_worker(settings, **env)

    job = wait_for(server.http, broken, timeout=120)
    assert job["status"] == "failed" and job["error"]["status"] == 422
    assert "cannot load model file broken.pt" in job["error"]["detail"]
    job = wait_for(server.http, crashy, timeout=120)
    assert job["status"] == "failed" and job["attempt"] == 2  # retried once, then failed
    assert job["error"]["detail"] == ("the explanation failed after 2 attempts: RuntimeError: "
                                      "crashy refuses batches of more than 2 images")
    r = server.http.get(f"/v1/explanations/{crashy}/relevance")
    assert r.status_code == 409 and "crashy refuses" in r.json()["detail"]
    job = wait_for(server.http, good, timeout=120)
    assert job["status"] == "finished"
    store = JobStore(connect(settings))
    assert len({store.field(i, "worker") for i in (broken, crashy, good)}) == 1
    record("failing_jobs", three_jobs_done_seconds=time.time() - t)


def test_results_past_their_lifetime_answer_410_end_to_end(settings, start_server,
                                                           start_worker, tmp_path):
    models = tmp_path / "models"
    write_models(models)
    env = {"PDA_MODEL_DIR": str(models), "PDA_WORKER_MODELS": "",
           "PDA_RESULT_TTL_SECONDS": "3"}
    server = start_server(settings, **env)
    start_worker(settings, **env)
    job = wait_for(server.http, post(server, {**SMALL_TINY, "model": "tiny"})["id"])
    assert job["status"] == "finished"
    links = [job["links"]["relevance"], job["links"]["input"], job["links"]["relevance_npy"]]
    assert all(server.http.get(u).status_code == 200 for u in links)
    wait_until("expiry", lambda: time.time() > _ts(job["expires_at"]) + 0.5, timeout=10)
    for url in links:
        r = server.http.get(url)
        assert r.status_code == 410 and "expired" in r.json()["detail"], r.text
    later = server.http.get(f"/v1/explanations/{job['id']}").json()
    assert later["status"] == "finished" and later["expires_at"] == job["expires_at"]
    # the same request again is a new job, not the expired one
    again = post(server, {**SMALL_TINY, "model": "tiny"})
    assert again["id"] != job["id"]
    assert wait_for(server.http, again["id"])["status"] == "finished"


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
