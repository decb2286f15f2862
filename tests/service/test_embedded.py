"""``pda serve`` with no PDA_REDIS_URL: the README's one command, end to end."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.support.paths import CAT
from tests.support.servers import worker_loaded
from tests.support.service import SMALL, make_settings, wait_for
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_embedded_mode_serves_a_working_api_with_no_redis(start_server):
    # PDA_CHUNK_PASSES small enough to split the second job below, not SMALL
    server = start_server(make_settings(redis_url=None), PDA_CHUNK_PASSES="128")
    ready = server.http.get("/readyz")  # ready at once; the in-process worker loads beside it
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"
    wait_until("the in-process worker to load its model", lambda: worker_loaded(server.http),
               timeout=90, every=0.3)
    ready = server.http.get("/readyz")
    assert ready.json()["mode"] == "embedded" and ready.json()["checks"]["workers"] == 1
    r = server.http.post("/v1/explanations", data=SMALL,
                         files={"image": ("cat.png", CAT.read_bytes(), "image/png")})
    assert r.status_code == 202, r.text
    job = wait_for(server.http, r.json()["id"], timeout=180)
    assert job["status"] == "finished", job
    assert job["prediction"][0]["label"] == "Egyptian cat"
    png = server.http.get(f"/v1/explanations/{job['id']}/overlay.png")
    assert png.status_code == 200
    Image.open(io.BytesIO(png.content)).verify()

    # the same chunks run in-process: 81 windows x 2 samples, two chunks, one merge
    r = server.http.post("/v1/explanations", data={"window": "16", "stride": "24",
                                                   "samples": "2", "seed": "3",
                                                   "faithfulness": "false"},
                         files={"image": ("cat.png", CAT.read_bytes(), "image/png")})
    assert r.status_code == 202, r.text
    job = wait_for(server.http, r.json()["id"], timeout=180)
    assert job["status"] == "finished", job
    assert job["chunks"] == {"total": 2, "done": 2}
    assert job["progress"]["done"] == job["progress"]["total"] == 163
