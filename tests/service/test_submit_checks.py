"""What is refused at submit, from model metadata alone (no worker, no torch model in the
API), and what the store does when Redis is full or has lost a record."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from rq.job import Job
from rq.job import JobStatus as RQStatus

from pda import catalog
from pda.jobs.queue import connect, rq_job_id
from pda.jobs.store import JobStore, new_job_id
from tests.support.servers import RedisServer
from tests.support.service import SMALL, assert_problem, make_settings, submit
from tests.support.waiting import wait_until
from worker.announce import announce_builtins


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_hidden_layer_channel_out_of_range_is_refused_at_submit(client):
    r = submit(client, data={**SMALL, "layer": "_blocks.12", "target": "99999"})
    body = assert_problem(r, 422, "192 channels", field="target")
    assert "channel 99999" in body["detail"]
    assert client.app.state.pda.queue.count == 0
    ok = submit(client, data={**SMALL, "layer": "_blocks.12", "target": "191"})
    assert ok.status_code == 202, ok.text


def test_a_layer_name_the_model_lacks_is_refused_and_the_listing_named(client):
    r = submit(client, data={**SMALL, "layer": "blocks.12"})  # the README's old typo
    body = assert_problem(r, 422, "no layer 'blocks.12'", field="layer")
    assert "/v1/models/efficientnet_lite0" in body["detail"]


@pytest.mark.parametrize("size", [(1, 1), (31, 200), (200, 12)])
def test_images_below_the_minimum_side_are_refused_naming_it(client, size):
    r = submit(client, image=png(*size))
    body = assert_problem(r, 422, "at least 32 pixels", field="image")
    assert body["type"] == "/problems/image-too-small"
    assert submit(client, image=png(32, 32)).status_code == 202


def test_model_layers_are_listed_with_channels_and_output_sizes(client):
    r = client.get("/v1/models/efficientnet_lite0")
    assert r.status_code == 200
    layers = {x["name"]: x for x in r.json()["layers"]}
    assert layers["_blocks.12"] == {"name": "_blocks.12", "type": "_MBConv",
                                    "channels": 192, "output_size": [192, 7, 7]}
    assert layers["_conv_stem"]["output_size"] == [32, 112, 112]
    assert "layers" not in client.get("/v1/models").json()[0]  # the listing stays short


def test_a_known_model_without_weights_says_what_to_install(clean_redis, tmp_path):
    settings = make_settings(weights_dir=tmp_path)
    from service.main import create_app

    with TestClient(create_app(settings, start_worker=False),
                    raise_server_exceptions=False) as c:
        # no worker has reported yet: the API cannot know what the workers have, so accepts
        assert submit(c, data={**SMALL, "model": "vgg16"}).status_code == 202
        # a worker without the weights tells it so (as pda worker does at start)
        announce_builtins(c.app.state.pda.conn, settings)
        body = assert_problem(submit(c, data={**SMALL, "model": "vgg16", "seed": "1"}), 422,
                              "vgg16-397923af.pth")
        assert body["type"] == "/problems/model-not-installed"
        assert str(tmp_path) in body["detail"]
        info = c.get("/v1/models/vgg16").json()
        assert info["available"] is False and "vgg16.pth" in info["install"]
        assert submit(c).status_code == 202  # the default model is there


def test_embedded_mode_knows_the_local_weights_are_the_workers(settings, tmp_path):
    from service.main import create_app

    # pda serve's own Redis and worker (embedded mode): the local weights are the worker's
    settings = settings.model_copy(update={"weights_dir": tmp_path})
    with TestClient(create_app(settings, embedded=True),
                    raise_server_exceptions=False) as c:
        body = assert_problem(submit(c, data={**SMALL, "model": "vgg16"}), 422)
        assert body["type"] == "/problems/model-not-installed"


def test_the_constant_sampler_records_the_one_pass_it_makes(client):
    job = submit(client, data={**SMALL, "sampler": "constant", "samples": "4"}).json()
    assert job["params"]["samples"] == 1
    assert job["progress"]["total"] == 7 * 7 + 1  # 49 windows, one pass each, + the image


def test_a_full_redis_refuses_new_jobs_with_503_and_still_serves(tmp_path):
    server = RedisServer(tmp_path / "redis", args=["--maxmemory", "4mb",
                                                   "--maxmemory-policy", "noeviction"])
    try:
        settings = make_settings(redis_url=server.url)
        from service.main import create_app

        with TestClient(create_app(settings, start_worker=False),
                        raise_server_exceptions=False) as c:
            first = submit(c)
            assert first.status_code == 202
            conn = connect(settings)
            filler = b"x" * 100_000
            with pytest.raises(Exception, match="maxmemory"):
                for i in range(1000):
                    conn.set(f"filler:{i}", filler)
            r = submit(c, data={**SMALL, "seed": "9"})
            body = assert_problem(r, 503, "memory limit")
            assert body["type"] == "/problems/store-full" and int(r.headers["retry-after"]) > 0
            # reads still work: callers can follow and fetch what is stored
            got = c.get(f"/v1/explanations/{first.json()['id']}")
            assert got.status_code == 200 and got.json()["status"] == "queued"
            assert c.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_progress_and_ends_never_recreate_a_record_redis_lost(clean_redis):
    store = JobStore(clean_redis)
    job_id = new_job_id()
    assert store.set_progress(job_id, 5, 10) is False
    assert store.update(job_id, prediction=[]) is False
    assert store.end(job_id, "failed", error={"detail": "x"}) is False
    assert clean_redis.exists(f"pda:job:{job_id}") == 0
    assert clean_redis.keys("pda:job:*") == []


def test_the_catalogue_reads_what_workers_published(clean_redis):
    settings = make_settings()
    catalog.publish(clean_redis, {"name": "vgg16", "available": True, "num_classes": 1000})
    info = catalog.model_info("vgg16", settings, clean_redis, local_is_truth=False)
    assert info["available"] is True and info["layers"][0]["name"] == "features"


@pytest.mark.slow
def test_a_worker_never_recreates_a_record_lost_mid_job(clean_redis, start_worker):
    settings = make_settings()
    from service.main import create_app

    worker = start_worker(settings)
    with TestClient(create_app(settings, start_worker=False)) as c:
        job_id = submit(c, data={"window": "16", "stride": "8", "samples": "8"}).json()["id"]
        store = JobStore(connect(settings))

        def log() -> str:
            return worker.log.read_text()[-2000:]

        wait_until("progress", lambda: (store.field(job_id, "progress_done") or 0) >= 2,
                   timeout=120, every=0.2, detail=log)
        clean_redis.delete(f"pda:job:{job_id}")  # Redis lost it (a restart, a flush)
        wait_until("the worker to see the record gone",
                   lambda: "record is gone" in worker.log.read_text(), timeout=120,
                   every=0.2, detail=log)
        # the attempt's function has returned (RQ marks its message finished): nothing of
        # it can write any more, so a record it would recreate is there by now
        message = Job.fetch(rq_job_id(job_id, 1), connection=clean_redis)
        wait_until("the attempt to return",
                   lambda: message.get_status(refresh=True) == RQStatus.FINISHED,
                   timeout=60, every=0.2, detail=log)
        assert clean_redis.exists(f"pda:job:{job_id}") == 0
        assert clean_redis.zscore("pda:running", job_id) is None


def test_a_failure_after_a_cancel_keeps_the_job_canceled(clean_redis):
    # a chunk whose image a DELETE just removed fails in its preparation; that must not
    # turn the canceled job into a failed one (CI saw 'failed' after a DELETE once)
    from pda.jobs import lifecycle
    from pda.jobs.record import JobRecord, JobStatus

    store = JobStore(clean_redis)
    for status in (JobStatus.CANCELED, JobStatus.FINISHED):
        job_id = new_job_id()
        store.create(JobRecord(id=job_id, status=JobStatus.RUNNING, owner="o", attempt=1,
                               model="m"), b"img", 60)
        if status == JobStatus.CANCELED:
            assert store.end(job_id, JobStatus.CANCELED)
        else:
            assert store.finish(job_id, {"document.json": b"{}"}, attempt=1)
        lifecycle.fail(store, job_id, "m", {"detail": "the image is gone"})
        rec = store.get(job_id)
        assert rec.status == status and rec.error is None
    assert "failed|m" not in store.metrics()[0]
    job_id = new_job_id()  # a running job still fails, and is counted
    store.create(JobRecord(id=job_id, status=JobStatus.RUNNING, owner="o", attempt=1,
                           model="m"), b"img", 60)
    lifecycle.fail(store, job_id, "m", {"detail": "boom"})
    assert store.get(job_id).status == JobStatus.FAILED
    assert store.metrics()[0]["failed|m"] == 1
