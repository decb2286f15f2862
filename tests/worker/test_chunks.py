"""Split jobs for real: one sweep cut into chunks, run by two ``pda worker`` processes on a
real Redis, merged into the map one process computes; a killed worker costs one chunk,
cancel stops every chunk, an AOF Redis restart loses nothing, and small jobs stay whole.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import redis
import torch

from pda import keys
from pda.engine.explain import explain
from pda.engine.inputs import preprocess
from pda.engine.stats import get_stats
from pda.images import open_image
from pda.jobs.workers import WorkerRegistry
from pda.models.registry import get_model
from pda.params import ExplainParams
from pda.runtime import Runtime
from pda.settings import Settings
from tests.support.paths import CAT
from tests.support.servers import RedisServer
from tests.support.service import make_settings, wait_for
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
PNG = CAT.read_bytes()
#: 18 x 18 = 324 windows, 2 samples: 648 passes; PDA_CHUNK_PASSES=128 cuts it into six
#: chunks of one 64-window block each
SPLIT = {"window": "16", "stride": "12", "sampler": "conditional", "samples": "2", "seed": "7",
         "faithfulness": "false"}
#: torch backend on both sides: these tests are about cutting and merging, compared with a
#: one-process map computed here the same way (backends: tests/pda/test_backends.py)
CHUNKED = {"PDA_BACKEND": "torch", "PDA_CHUNK_PASSES": "128", "PDA_CHUNKS_IN_FLIGHT": "2",
           "PDA_STALE_JOB_SECONDS": "4", "PDA_HEARTBEAT_INTERVAL_SECONDS": "1"}


@pytest.fixture(scope="module")
def one_process_map() -> np.ndarray:
    """The map a single process computes for SPLIT (same model, batch size, seed, and one
    thread like the workers: kernels sum in another order on more threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = Settings()
    model = get_model(settings.default_model, torch.device("cpu"), settings)
    image = open_image(PNG, max_pixels=settings.max_image_pixels, fit_to=model.input_size)
    params = ExplainParams(**SPLIT)
    x, _ = preprocess(image, model.input_size, params.fit)
    try:
        return explain(model, x, params, get_stats(settings.sampler_stats),
                       runtime=Runtime(batch_size=8, backend="torch")).relevance
    finally:
        torch.set_num_threads(threads)


def relevance(http, job_id: str) -> np.ndarray:
    r = http.get(f"/v1/explanations/{job_id}/relevance.npy")
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def assert_same_map(got: np.ndarray, want: np.ndarray) -> None:
    peak = float(np.abs(want).max())
    assert got.shape == want.shape and peak > 0
    assert float(np.abs(got - want).max()) <= 1e-5 * peak


class ChunkWatcher(threading.Thread):
    """Keeps every chunk table it sees (the table is deleted when the job ends)."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(settings.redis_url)
        self.key, self.tables, self.done = keys.chunks(job_id), [], threading.Event()
        self.start()

    def run(self) -> None:
        import json

        while not self.done.is_set():
            try:
                raw = self.r.hgetall(self.key)
                if raw:
                    self.tables.append({int(k): json.loads(v) for k, v in raw.items()})
            except redis.RedisError:
                pass
            time.sleep(0.05)

    def stop(self) -> dict[int, dict]:
        self.done.set()
        self.join(5)
        return self.tables[-1] if self.tables else {}


def start_workers(start_worker, settings: Settings, n: int, **env: str) -> list:
    workers = [start_worker(settings, **CHUNKED, **env) for _ in range(n)]
    registry = WorkerRegistry(redis.Redis.from_url(settings.redis_url))

    def all_idle() -> bool:
        for w in workers:
            assert w.proc.poll() is None, w.log.read_text()[-2000:]
        return sum(w.get("state") == "idle" for w in registry.alive()) >= n

    wait_until("the workers to load their model", all_idle, timeout=180, every=0.2)
    return workers


def submit(client, data=SPLIT) -> str:
    r = client.post("/v1/explanations", files={"image": ("cat.png", PNG, "image/png")},
                    data=data)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_two_workers_share_a_split_job_and_give_the_one_process_map(
        settings, client, start_worker, one_process_map):
    start_workers(start_worker, settings, 2)
    job_id = submit(client)
    watch = ChunkWatcher(settings, job_id)
    seen_progress = []

    def ended() -> dict | None:
        job = client.get(f"/v1/explanations/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        if job["chunks"]:
            seen_progress.append((job["chunks"]["done"], job["progress"]["done"]))
        return None

    job = wait_until("the split job to end", ended, timeout=240)
    table = watch.stop()
    assert job["status"] == "finished", job
    assert job["chunks"] == {"total": 6, "done": 6}
    assert job["progress"]["done"] == job["progress"]["total"] == 649
    assert len(table) == 6 and all(c["status"] == "done" for c in table.values())
    share = {}
    for c in table.values():
        share[c["worker"]] = share.get(c["worker"], 0) + 1
    assert len(share) == 2, share  # both workers did a real share
    dones = [d for d, _ in seen_progress]
    assert dones == sorted(dones) and 0 < max(p for _, p in seen_progress)
    assert_same_map(relevance(client, job_id), one_process_map)


def test_a_killed_worker_costs_one_chunk_and_the_map_is_unchanged(
        settings, client, start_worker, one_process_map):
    workers = start_workers(start_worker, settings, 2)
    job_id = submit(client)
    watch = ChunkWatcher(settings, job_id)
    # kill the worker of a chunk that has started but not finished
    running = wait_until("a running chunk", lambda: [
        c for t in watch.tables[-1:] for c in t.values() if c["status"] == "running"],
        timeout=120, every=0.05)
    pid = int(running[0]["worker"].rsplit(":", 1)[1])
    victim = next(w for w in workers if w.proc.pid == pid)
    victim.proc.kill()
    job = wait_for(client, job_id, timeout=240)
    table = watch.stop()
    assert job["status"] == "finished", job
    assert job["attempt"] == 1  # the job was not rerun, one chunk was
    attempts = sorted(c["attempt"] for c in table.values())
    assert attempts == [1, 1, 1, 1, 1, 2], table
    assert_same_map(relevance(client, job_id), one_process_map)


def test_cancel_stops_every_chunk(settings, client, start_worker):
    workers = start_workers(start_worker, settings, 2)
    job_id = submit(client, {**SPLIT, "seed": "8"})
    r = redis.Redis.from_url(settings.redis_url)
    wait_until("a claimed chunk", lambda: r.hlen(keys.chunk_progress(job_id)), timeout=120,
               every=0.05)
    assert client.delete(f"/v1/explanations/{job_id}").status_code == 200
    registry = WorkerRegistry(r)
    # within one batch, not the rest of the job
    wait_until("every worker idle", lambda: all(w.get("state") == "idle"
                                                 for w in registry.alive()),
               timeout=15, detail=registry.alive)
    assert client.get(f"/v1/explanations/{job_id}").json()["status"] == "canceled"
    assert not r.exists(keys.chunks(job_id), keys.partials(job_id))
    assert all(w.proc.poll() is None for w in workers)


def test_a_small_job_is_not_split(settings, client, start_worker):
    start_workers(start_worker, settings, 1)
    # scores off: their 590 passes are not what this test is about, and on a loaded
    # 2-vCPU machine (load 17) they alone outlasted the timeout
    job_id = submit(client, {"window": "56", "stride": "56", "sampler": "constant",
                             "faithfulness": "false"})
    job = wait_for(client, job_id, timeout=120)
    assert job["status"] == "finished" and job["chunks"] is None


def test_redis_restart_with_aof_during_a_split_job(tmp_path, start_worker, one_process_map):
    from fastapi.testclient import TestClient

    from service.main import create_app

    own = RedisServer(tmp_path / "redis", appendonly=True)
    try:
        settings = make_settings(redis_url=own.url)
        start_workers(start_worker, settings, 2)
        with TestClient(create_app(settings, start_worker=False)) as client:
            job_id = submit(client)
            r = redis.Redis.from_url(own.url)
            wait_until("a finished chunk",
                       lambda: int(r.hget(keys.job(job_id), "chunks_done") or 0) >= 1,
                       timeout=120, every=0.05)
            own.stop()
            time.sleep(2)  # an outage of some length (what follows waits on events)
            own.start()
            job = wait_for(client, job_id, timeout=240)
            assert job["status"] == "finished", job
            assert job["chunks"]["done"] == 6
            assert_same_map(relevance(client, job_id), one_process_map)
    finally:
        own.stop()
