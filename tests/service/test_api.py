"""Every endpoint, status code and problem document (real Redis, no worker needed)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pda.jobs.queue import rq_job_id
from pda.jobs.store import JobStore, now_iso
from tests.support.paths import CAT
from tests.support.service import SMALL, assert_problem, make_settings, submit

PNG = CAT.read_bytes()


def test_post_multipart_answers_202_with_location_retry_after_and_the_job(client):
    r = submit(client, data={**SMALL, "target": "top2", "seed": "7"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/explanations/{job['id']}"
    assert int(r.headers["retry-after"]) >= 1
    assert job["status"] == "queued"
    assert job["progress"] == {"done": 0, "total": 99, "fraction": 0.0}
    assert job["params"]["window"] == 32 and job["params"]["seed"] == 7
    assert job["params"]["target"] == "top2"
    assert job["model"] == "efficientnet_lite0"
    assert job["image"]["width"] == 451 and job["image"]["height"] == 300
    assert len(job["id"]) >= 22  # 128 random bits
    assert client.app.state.pda.queue.count == 1


def test_post_json_with_base64_is_accepted(client):
    body = {"image_base64": base64.b64encode(PNG).decode(), "params": {**SMALL, "samples": 3}}
    r = client.post("/v1/explanations", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["params"]["samples"] == 3
    assert r.json()["progress"]["total"] == 49 * 3 + 1


@pytest.mark.parametrize("data,field,needle", [
    ({"window": "0"}, "window", "greater than or equal to 1"),
    ({"window": "300"}, "window", "exceeds"),
    ({"samples": "0"}, "samples", None),
    ({"samples": "many"}, "samples", None),
    ({"stride": "-1"}, "stride", None),
    ({"sampler": "magic"}, "sampler", None),
    ({"target": "best"}, "target", "topK"),
    ({"target": "1000"}, "target", "does not exist"),
    ({"layer": "no_such_block"}, "layer", "no_such_block"),
    ({"layer": "../etc"}, "layer", None),
    ({"fill": "2,0,0", "sampler": "constant"}, "fill", None),
    ({"color": "red"}, "color", None),
    ({"preset": "turbo"}, "preset", "fast, paper"),
    ({"window": "1", "stride": "1", "samples": "1000"}, "samples", "forward passes"),
])
def test_bad_parameters_answer_422_naming_the_field(client, data, field, needle):
    r = submit(client, data={**SMALL, **data})
    assert_problem(r, 422, needle, field)
    assert client.app.state.pda.queue.count == 0  # validated before anything is enqueued


def test_unknown_model_answers_404(client):
    body = assert_problem(submit(client, data={**SMALL, "model": "resnet9000"}), 404, "resnet9000")
    assert body["type"] == "/problems/unknown-model"


def test_model_paths_are_not_accepted_over_http(client):
    assert_problem(submit(client, data={**SMALL, "model": "/etc/passwd.pt2"}), 404, "path")


def test_not_an_image_answers_415(client):
    assert_problem(submit(client, image=b"hello, I am text"), 415, "image")


def test_missing_image_field_answers_422(client):
    r = client.post("/v1/explanations", data=SMALL, files={"other": ("x", b"x")})
    assert_problem(r, 422, field="image")


def test_wrong_content_type_answers_415(client):
    r = client.post("/v1/explanations", content=b"abc", headers={"content-type": "text/plain"})
    assert_problem(r, 415, "multipart/form-data")


def test_bad_base64_and_bad_json_are_caller_errors(client):
    assert_problem(client.post("/v1/explanations", json={"image_base64": "%%%"}), 422,
                   field="image_base64")
    r = client.post("/v1/explanations", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert_problem(r, 400, "JSON")


def test_uploads_over_the_byte_cap_answer_413(clean_redis):
    from service.main import create_app

    settings = make_settings(max_upload_bytes=10_000)
    with TestClient(create_app(settings, start_worker=False)) as c:
        assert_problem(submit(c), 413, "10000 bytes")


def test_unknown_job_answers_404_problem(client):
    body = assert_problem(client.get("/v1/explanations/nope"), 404, "nope")
    assert body["type"] == "/problems/unknown-job"
    assert_problem(client.get("/v1/explanations/nope/relevance"), 404)
    assert_problem(client.delete("/v1/explanations/nope"), 404)


def test_results_of_a_queued_job_answer_409_with_retry_after(client):
    job_id = submit(client).json()["id"]
    r = client.get(f"/v1/explanations/{job_id}/relevance")
    assert_problem(r, 409, "queued")
    assert "retry-after" in r.headers
    assert client.get(f"/v1/explanations/{job_id}").headers["retry-after"]


def test_delete_cancels_a_queued_job_so_it_never_runs(client, settings, monkeypatch):
    app_state = client.app.state.pda
    job_id = submit(client).json()["id"]
    r = client.delete(f"/v1/explanations/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert app_state.queue.count == 0  # the queued message is gone
    rq_job = app_state.queue.fetch_job(rq_job_id(job_id, 1))
    assert rq_job is not None and rq_job.get_status() == "canceled"
    # and were it delivered anyway, the job function refuses to run it
    from pda.settings import get_settings
    from worker import tasks as jobs

    monkeypatch.setenv("PDA_REDIS_URL", settings.redis_url)
    get_settings.cache_clear()
    assert jobs.run_explanation(job_id, 1).startswith("skipped")
    assert_problem(client.get(f"/v1/explanations/{job_id}/relevance"), 410, "canceled")
    assert client.get(f"/v1/explanations/{job_id}").json()["status"] == "canceled"


def test_identical_requests_reuse_the_job(client):
    a, b = submit(client).json(), submit(client).json()
    assert a["id"] == b["id"]
    c = submit(client, data={**SMALL, "seed": "1"}).json()
    assert c["id"] != a["id"]
    assert client.app.state.pda.queue.count == 2


def test_idempotency_key_makes_retried_posts_safe(client):
    h = {"Idempotency-Key": "order-42"}
    a = submit(client, headers=h).json()
    b = submit(client, headers=h).json()
    assert a["id"] == b["id"]
    r = submit(client, data={**SMALL, "seed": "3"}, headers=h)
    assert_problem(r, 409, "Idempotency-Key")


def test_finished_results_past_their_lifetime_answer_410(client):
    store: JobStore = client.app.state.pda.store
    job_id = submit(client).json()["id"]
    store.update(job_id, status="finished", targets=[{"target": 285, "label": "cat"}],
                 finished_at=now_iso(), expires_at=now_iso(time.time() - 1))
    body = assert_problem(client.get(f"/v1/explanations/{job_id}/relevance"), 410, "expired")
    assert body["type"] == "/problems/gone"
    assert_problem(client.get(f"/v1/explanations/{job_id}/overlay.png"), 410)


def test_models_list_and_lookup(client):
    models = client.get("/v1/models").json()
    names = {m["name"]: m for m in models}
    assert names["efficientnet_lite0"]["available"] and names["efficientnet_lite0"]["default"]
    assert {"alexnet", "vgg16", "googlenet", "resnet50"} <= set(names)
    assert client.get("/v1/models/efficientnet_lite0").json()["input_size"] == [224, 224]
    assert_problem(client.get("/v1/models/nope"), 404)


@pytest.mark.slow
def test_predictions_return_top_k_synchronously(worker_client):
    client = worker_client  # the prediction is computed by a worker, as the API waits
    r = client.post("/v1/predictions", files={"image": ("c.png", PNG, "image/png")},
                    data={"top": "3", "fit": "crop"})
    assert r.status_code == 200, r.text
    pred = r.json()["prediction"]
    assert len(pred) == 3 and pred[0]["label"] == "Egyptian cat"
    assert pred[0]["probability"] == pytest.approx(0.384, abs=0.02)
    assert_problem(client.post("/v1/predictions", files={"image": ("c.png", b"x", "image/png")}),
                   415)
    assert_problem(client.post("/v1/predictions", files={"image": ("c.png", PNG, "image/png")},
                               data={"top": "0"}), 422, field="top")


def metric(client, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_livez_readyz_and_metrics(client):
    assert client.get("/livez").json() == {"status": "ok"}
    r = client.get("/readyz")  # Redis is up but no worker runs: ready all the same
    assert r.status_code == 200 and r.json()["checks"] == {"redis": "ok", "workers": 0}
    assert r.json()["workers"]["alive"] == 0
    route = {"method": "GET", "route": "/v1/explanations/{job_id}", "status": "404"}
    before = metric(client, "pda_jobs_submitted_total", model="efficientnet_lite0")
    before_404 = metric(client, "pda_http_request_duration_seconds_count", **route)
    submit(client)
    client.get("/v1/explanations/nope")
    assert metric(client, "pda_jobs_submitted_total", model="efficientnet_lite0") == before + 1
    assert metric(client, "pda_http_request_duration_seconds_count", **route) == before_404 + 1
    assert metric(client, "pda_queue_depth") == 1
    assert metric(client, "pda_jobs_running") == 0
    assert metric(client, "pda_store_up") == 1
    text = client.get("/metrics").text
    for name in ("pda_sweep_duration_seconds_bucket", "pda_forward_passes_total",
                 "pda_forward_passes_per_second", "pda_workers"):
        assert name in text


def test_unknown_routes_and_methods_are_problems(client):
    assert_problem(client.get("/v2/nothing"), 404)
    assert_problem(client.put("/v1/explanations"), 405)


def test_api_keys_guard_every_route_and_hide_other_callers_jobs(clean_redis):
    from service.main import create_app

    settings = make_settings(api_keys="alpha,beta")
    with TestClient(create_app(settings, start_worker=False)) as c:
        assert_problem(submit(c), 401, "API key")
        assert_problem(submit(c, headers={"Authorization": "Bearer wrong"}), 401)
        assert c.get("/livez").status_code == 200 and c.get("/metrics").status_code == 200
        a = submit(c, headers={"Authorization": "Bearer alpha"})
        assert a.status_code == 202
        job_id = a.json()["id"]
        assert c.get(f"/v1/explanations/{job_id}", headers={"X-API-Key": "alpha"}).status_code \
            == 200
        assert_problem(c.get(f"/v1/explanations/{job_id}", headers={"X-API-Key": "beta"}), 404)
        assert_problem(c.delete(f"/v1/explanations/{job_id}", headers={"X-API-Key": "beta"}), 404)
        assert_problem(c.get("/v1/models"), 401)


def test_the_tests_run_on_a_redis_of_their_own(redis_conn):
    # never a developer's Redis on the default port: a throwaway server in a temp folder
    if os.environ.get("PDA_TEST_REDIS_URL"):
        pytest.skip("PDA_TEST_REDIS_URL names a Redis explicitly")
    assert redis_conn.info("server")["tcp_port"] != 6379
    folder = redis_conn.config_get("dir")["dir"]
    assert folder.startswith(tempfile.gettempdir()), folder


def test_predictions_without_a_live_worker_answer_503_with_retry_after(client):
    r = client.post("/v1/predictions", files={"image": ("c.png", PNG, "image/png")})
    body = assert_problem(r, 503, "no worker is alive")
    assert body["type"] == "/problems/no-worker" and int(r.headers["retry-after"]) > 0
    # the request stays queued until it expires, so a scaler sees demand for a worker
    assert client.app.state.pda.predict_queue.count == 1


def test_the_api_process_never_imports_torch():
    # the front door validates against metadata; models run in workers only
    code = ("import sys; import service.main; from service.main import create_app; "
            "from pda.settings import Settings; create_app(Settings(redis_url="
            "'redis://127.0.0.1:1/0')); print(sorted(m for m in sys.modules if m == 'torch' "
            "or m.startswith(('torch.', 'torchvision', 'pda.engine', 'pda.models'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
