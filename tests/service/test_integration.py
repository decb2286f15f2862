"""The real thing: Redis, ``pda serve`` over HTTP, ``pda worker`` processes, a real photo."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.support.paths import CAT
from tests.support.servers import worker_loaded
from tests.support.service import SMALL, wait_for
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
PNG = CAT.read_bytes()


def post(server, data=SMALL, headers=None):
    r = server.http.post("/v1/explanations", files={"image": ("cat.png", PNG, "image/png")},
                         data=data, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


def test_a_real_photo_goes_through_queue_and_worker_and_back(settings, start_server,
                                                             start_worker):
    server = start_server(settings)
    start_worker(settings)
    job = post(server, data={**SMALL, "target": "top2"})
    seen = set()

    def ended() -> dict | None:
        cur = server.http.get(f"/v1/explanations/{job['id']}").json()
        seen.add((cur["status"], cur["progress"]["done"], cur["progress"]["total"]))
        return cur if cur["status"] in ("finished", "failed") else None

    cur = wait_until("the job to end", ended, timeout=180, detail=lambda: seen)
    assert cur["status"] == "finished", cur
    # progress moved through intermediate values while running (batches of 8 of 99)
    assert any(s == "running" and 0 < d < 99 for s, d, _ in seen), seen
    assert {t for _, _, t in seen} == {99}  # the total never changes while it runs
    assert cur["progress"] == {"done": 99, "total": 99, "fraction": 1.0}
    assert cur["prediction"][0]["label"] == "Egyptian cat"
    assert cur["started_at"] and cur["finished_at"] and cur["expires_at"]
    doc = server.http.get(cur["links"]["relevance"]).json()
    assert doc["model"]["input_size"] == [224, 224]
    assert [e["target"] for e in doc["explanations"]] == [285, 282]
    grid = np.array(doc["explanations"][0]["relevance"])
    assert grid.shape == (224, 224) and np.isfinite(grid).all() and np.abs(grid).max() > 0
    png = server.http.get(cur["links"]["overlays"]["285"])
    assert png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as im:
        im.load()
        assert im.width >= 448
    npy = np.load(io.BytesIO(server.http.get(cur["links"]["relevance_npy"]).content))
    assert npy.shape == (2, 224, 224)
    np.testing.assert_allclose(npy[0], grid, atol=1e-5)
    inp = server.http.get(cur["links"]["input"])
    assert Image.open(io.BytesIO(inp.content)).size == (224, 224)
    assert server.http.get("/readyz").status_code == 200
    metrics = server.http.get("/metrics").text
    assert 'pda_jobs_total{model="efficientnet_lite0",outcome="finished"} 1.0' in metrics


def test_cancel_stops_a_running_sweep_and_frees_the_worker(settings, start_server, start_worker):
    server = start_server(settings)
    start_worker(settings)
    # 27 x 27 windows x 8 samples: minutes of work, in batches of 8
    big = post(server, data={"window": "16", "stride": "8", "samples": "8", "seed": "1"})
    def sweeping() -> dict | None:
        cur = server.http.get(f"/v1/explanations/{big['id']}").json()
        return cur if cur["status"] == "running" and cur["progress"]["done"] > 0 else None

    cur = wait_until("the big job to sweep", sweeping, timeout=120)
    assert cur["status"] == "running", cur
    # the worker's beat says busy first, so the idle beat awaited below comes after the sweep
    wait_until("the worker's beat to say busy",
               lambda: server.http.get("/readyz").json()["workers"]["busy"] >= 1, timeout=60)
    r = server.http.delete(f"/v1/explanations/{big['id']}")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    # the worker stops the sweep at the end of its batch and beats idle again
    wait_until("the worker to stop the canceled sweep and go idle",
               lambda: worker_loaded(server.http), timeout=60)
    frozen = server.http.get(f"/v1/explanations/{big['id']}").json()
    # the worker is free again: a small job finishes. Its one worker ran it after the
    # canceled sweep had returned, so any progress that sweep would still write is there
    small = post(server)
    assert wait_for(server.http, small["id"], timeout=120)["status"] == "finished"
    later = server.http.get(f"/v1/explanations/{big['id']}").json()
    assert later["status"] == "canceled"
    assert later["progress"]["done"] == frozen["progress"]["done"] < frozen["progress"]["total"]
    assert server.http.get(f"/v1/explanations/{big['id']}/relevance").status_code == 410


def test_two_workers_drain_several_jobs_and_nothing_is_lost(settings, start_server,
                                                            start_worker):
    server = start_server(settings)
    start_worker(settings)
    start_worker(settings)
    ids = [post(server, data={**SMALL, "sampler": "marginal", "seed": str(s)})["id"]
           for s in range(6)]
    assert len(set(ids)) == 6
    done = [wait_for(server.http, i, timeout=300) for i in ids]
    assert [j["status"] for j in done] == ["finished"] * 6
    workers = set()
    from pda.jobs.queue import connect
    from pda.jobs.store import JobStore

    js = JobStore(connect(settings))
    for i in ids:
        workers.add(js.field(i, "worker"))
        assert js.field(i, "attempt") == 1  # none ran twice
    assert len(workers) == 2, workers  # both workers took jobs


def test_a_repeated_request_is_served_from_the_stored_result(settings, start_server,
                                                             start_worker):
    server = start_server(settings)
    start_worker(settings)
    first = post(server)
    assert wait_for(server.http, first["id"])["status"] == "finished"
    t = time.perf_counter()
    again = post(server)
    assert again["id"] == first["id"] and again["status"] == "finished"
    assert time.perf_counter() - t < 5  # no sweep was run
    body = json.loads(server.http.get(f"/v1/explanations/{first['id']}/relevance").content)
    assert body["stats"]["forward_passes"] == 99


def test_each_explanation_carries_its_faithfulness_score(settings, start_server, start_worker):
    server = start_server(settings)
    start_worker(settings)
    job = post(server, data={**SMALL, "target": "top1", "faithfulness": "true"})
    cur = wait_for(server.http, job["id"])
    assert cur["status"] == "finished", cur
    # 49 windows x 2 samples + 1, then 2 + 2 x 24 x (1 target + 3 random orders) = 194
    assert cur["progress"]["total"] == 99 + 194
    f = cur["targets"][0]["faithfulness"]  # the job resource's summary, without curves
    assert set(f) == {"deletion_auc", "insertion_auc", "baseline", "fill", "step"}
    doc = server.http.get(cur["links"]["relevance"]).json()
    full = doc["explanations"][0]["faithfulness"]
    assert full["deletion_auc"] == f["deletion_auc"] and 0 <= f["deletion_auc"] <= 1
    assert len(full["curves"]["deletion"]) == full["protocol"]["curve_points"] == 26
    assert doc["stats"] == {**doc["stats"], "forward_passes": 293, "faithfulness_passes": 194}


def test_a_drilldown_through_the_service_is_the_librarys_drilldown(settings, start_server,
                                                                   start_worker):
    """The worker runs the engine's one run: a request with ``drilldown`` gets the
    approximate mode, its ``approximation`` section and its passes, exactly as the library
    (and so the CLI) gives them for the same seed, and the job's total is the drill-down's
    bound, not the exact sweep's passes."""
    import pda

    fields = {"window": "32", "stride": "8", "sampler": "constant", "drilldown": "0.2",
              "coarse_stride": "32", "faithfulness": "false", "target": "top2", "seed": "3"}
    server = start_server(settings)
    start_worker(settings)
    job = wait_for(server.http, post(server, data=fields)["id"])
    assert job["status"] == "finished", job
    doc = server.http.get(job["links"]["relevance"]).json()
    served = np.array([e["relevance"] for e in doc["explanations"]])

    mine = pda.explain(CAT.read_bytes(), window=32, stride=8, sampler="constant",
                       drilldown=0.2, coarse_stride=32, faithfulness=False, target="top2",
                       seed=3, batch_size=8)
    approx = doc["approximation"]
    assert approx == mine.document["approximation"]  # the same coarse, refined and checked
    assert approx["mode"] == "drilldown" and approx["saving"] > 1.5
    exact = approx["exact_forward_passes"]  # the exact sweep's windows + the image's pass
    assert exact == 625 + 1
    assert job["progress"]["done"] == job["progress"]["total"] >= approx["forward_passes"]
    assert job["progress"]["total"] < exact  # the job was planned as the drill-down
    peak = float(np.abs(mine.relevance).max())
    assert peak > 0 and float(np.abs(served - mine.relevance).max()) <= 1e-5 * peak
