"""``/v1/batches``: many images in one request, through the API with real worker processes:
each item's outcome (one corrupt image fails alone), the streamed archive, cancellation,
the limits, idempotency, interactive work before batch work, and two keys taking turns."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from pda.jobs.workers import WorkerRegistry
from tests.support.service import PNG, assert_problem, make_settings
from tests.support.waiting import wait_until

#: 17 forward passes: a job of a second or two
TINY = {"window": "56", "stride": "56", "sampler": "constant", "samples": "1",
        "faithfulness": "false"}
#: 197 forward passes: several seconds on one CPU thread
BIG = {"window": "16", "stride": "16", "sampler": "constant", "samples": "1",
       "faithfulness": "false"}


def variant(k: int) -> bytes:
    """The test photo, changed so that each ``k`` is a different image (no dedup)."""
    img = Image.open(io.BytesIO(PNG)).convert("RGB")
    img = img.rotate(90 * (k % 4)) if k % 2 else img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img.putpixel((k, k), (k % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def post_batch(http, images, data=TINY, headers=None):
    files = [("image", (name, body, "image/png")) for name, body in images]
    return http.post("/v1/batches", files=files, data=data, headers=headers)


def wait_batch(http, batch_id, statuses=("finished", "canceled"), timeout=240, headers=None):
    last = {}

    def ended():
        last["b"] = b = http.get(f"/v1/batches/{batch_id}", headers=headers).json()
        return b if b["status"] in statuses else None

    return wait_until(f"batch {batch_id} to end", ended, timeout=timeout, every=0.2,
                      detail=lambda: last.get("b"))


def app_with(settings, worker=None):
    from service.main import create_app

    if worker is not None:
        registry = WorkerRegistry(redis.Redis.from_url(settings.redis_url))

        def idle() -> bool:
            assert worker.proc.poll() is None, worker.log.read_text()[-2000:]
            return any(w.get("state") == "idle" for w in registry.alive())

        wait_until("the worker to load its model", idle, timeout=180, every=0.2)
    return TestClient(create_app(settings, start_worker=False), raise_server_exceptions=False)


@pytest.mark.slow  # a real worker
def test_a_batch_with_one_corrupt_image_runs_the_others_and_streams_its_archive(
        clean_redis, start_worker):
    settings = make_settings()
    worker = start_worker(settings)
    images = [("a.png", variant(1)), ("dir/b.png", variant(2)), ("broken.png", b"not a png"),
              ("c.png", variant(3))]
    with app_with(settings, worker) as http:
        r = post_batch(http, images)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/batches/{r.json()['id']}"
        assert int(r.headers["retry-after"]) >= 1
        batch = r.json()
        assert batch["total"] == 4 and batch["status"] in ("queued", "running")
        assert [i["filename"] for i in batch["items"]] == [n for n, _ in images]
        bad = batch["items"][2]
        assert bad["id"] is None and bad["status"] == "failed"
        assert bad["error"]["status"] == 415 and bad["error"]["type"] == \
            "/problems/unsupported-image"
        assert batch["progress"]["total"] == 3 * 17  # fixed at submit: the valid three
        assert batch["links"]["results"].endswith("/results.zip")

        done = wait_batch(http, batch["id"])
        assert done["status"] == "finished", done
        assert done["counts"] == {"queued": 0, "running": 0, "finished": 3, "failed": 1,
                                  "canceled": 0}
        assert done["progress"] == {"done": 51, "total": 51, "fraction": 1.0}
        assert done["eta_seconds"] is None
        for item in done["items"]:
            if item["id"] is None:
                continue
            job = http.get(f"/v1/explanations/{item['id']}").json()  # an ordinary job
            assert job["status"] == "finished" and job["image"]["filename"] == item["filename"]
            assert item["links"]["relevance"] == f"/v1/explanations/{item['id']}/relevance"

        r = http.get(done["links"]["results"])
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        z = zipfile.ZipFile(io.BytesIO(r.content))
        names = z.namelist()
        folders = ["0000-a", "0001-b", "0003-c"]
        assert sorted(names) == sorted([f"{f}/{n}" for f in folders for n in (
            "result.json", "relevance.npy", "overlay.png")] + ["summary.json",
                                                              "contact-sheet.png"])
        summary = json.loads(z.read("summary.json"))
        assert summary["counts"]["total"] == 4 and summary["counts"]["finished"] == 3
        assert summary["counts"]["failed"] == 1
        entries = summary["items"]
        assert [e["file"] for e in entries] == [n for n, _ in images]
        assert entries[2]["error"]["status"] == 415 and entries[2]["top1"] is None
        for e in (entries[0], entries[1], entries[3]):
            assert e["status"] == "finished" and e["forward_passes"] == 17
            assert 0 < e["top1"]["probability"] <= 1 and e["top1"]["label"]
        doc = json.loads(z.read("0000-a/result.json"))
        assert doc["prediction"][0]["label"] == entries[0]["top1"]["label"]
        overlay = Image.open(io.BytesIO(z.read("0000-a/overlay.png")))
        assert overlay.format == "PNG" and overlay.width > 64
        sheet = Image.open(io.BytesIO(z.read("contact-sheet.png")))
        # 4 tiles of 160 px in 2 columns and 2 rows, each with its caption below
        assert sheet.format == "PNG" and 320 <= sheet.width <= 400 and \
            320 <= sheet.height <= 520, sheet.size


@pytest.mark.slow  # a real worker
def test_delete_cancels_the_items_not_yet_ended_and_finished_ones_stay(
        clean_redis, start_worker):
    settings = make_settings(batch_in_flight=1)
    worker = start_worker(settings, PDA_BATCH_IN_FLIGHT="1")
    with app_with(settings, worker) as http:
        batch = post_batch(http, [(f"{k}.png", variant(k)) for k in range(4)], BIG).json()

        def first_finished():
            b = http.get(f"/v1/batches/{batch['id']}").json()
            return b if b["items"][0]["status"] == "finished" else None

        wait_until("the first item to finish", first_finished, timeout=240)
        r = http.delete(f"/v1/batches/{batch['id']}")
        assert r.status_code == 200, r.text
        gone = r.json()
        assert gone["status"] == "canceled" and gone["canceled_at"]
        statuses = [i["status"] for i in gone["items"]]
        assert statuses[0] == "finished" and statuses[-1] == "canceled", statuses
        assert set(statuses) <= {"finished", "canceled"}
        assert gone["counts"]["canceled"] >= 1
        first = gone["items"][0]["id"]
        assert http.get(f"/v1/explanations/{first}/relevance").status_code == 200
        for item in gone["items"]:
            if item["status"] == "canceled":
                job = http.get(f"/v1/explanations/{item['id']}").json()
                assert job["status"] == "canceled"
        # the archive holds what finished
        z = zipfile.ZipFile(io.BytesIO(http.get(gone["links"]["results"]).content))
        assert "0000-0/result.json" in z.namelist()
        assert not any(n.startswith("0003-") for n in z.namelist())
        # a second DELETE changes nothing
        again = http.delete(f"/v1/batches/{batch['id']}").json()
        assert [i["status"] for i in again["items"]] == statuses


def test_the_limits_name_their_settings_and_nothing_is_stored(clean_redis):
    settings = make_settings(batch_max_items=2, batch_max_bytes=1_000_000,
                             batch_max_open_items=3)
    with app_with(settings) as http:
        r = post_batch(http, [(f"{k}.png", variant(k)) for k in range(3)])
        body = assert_problem(r, 422, "PDA_BATCH_MAX_ITEMS")
        assert body["type"] == "/problems/batch-too-many-items" and body["limit"] == 2
        big = [(f"{k}.png", variant(k) + b"\0" * 400_000) for k in range(2)]
        body = assert_problem(post_batch(http, big), 413, "PDA_BATCH_MAX_BYTES")
        assert body["type"] == "/problems/batch-too-large"
        assert not clean_redis.keys("pda:batch:*")  # nothing stored by the refused ones

        ok = post_batch(http, [(f"{k}.png", variant(k)) for k in range(2)])
        assert ok.status_code == 202  # no worker: its 2 items stay open
        r = post_batch(http, [(f"{k}.png", variant(k)) for k in range(2, 4)])
        body = assert_problem(r, 429, "PDA_BATCH_MAX_OPEN_ITEMS")
        assert body["limit"] == 3 and body["open_items"] == 2
        assert r.headers["retry-after"]
        assert len(clean_redis.keys("pda:batch:b_*:items")) == 1
        # the JSON form: base64 images, and a bad one is its item's problem
        import base64
        r = http.post("/v1/batches", json={"images": [
            {"filename": "x.png", "data": base64.b64encode(variant(7)).decode()},
            {"filename": "tiny.png", "data": base64.b64encode(_tiny()).decode()}],
            "params": TINY | {"window": 56, "stride": 56, "samples": 1,
                              "faithfulness": False}})
        assert_problem(r, 429, "PDA_BATCH_MAX_OPEN_ITEMS")


def _tiny() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


def test_json_and_archive_forms_refuse_bad_images_alone_and_idempotency_replays(
        clean_redis):
    import base64
    settings = make_settings()
    with app_with(settings) as http:
        r = http.post("/v1/batches", json={"images": [
            {"filename": "x.png", "data": base64.b64encode(variant(7)).decode()},
            {"filename": "tiny.png", "data": base64.b64encode(_tiny()).decode()},
            {"filename": "empty.png", "data": ""}],
            "params": {"window": 56, "stride": 56, "samples": 1, "sampler": "constant",
                       "faithfulness": False}})
        assert r.status_code == 202, r.text
        items = r.json()["items"]
        assert items[0]["status"] == "queued" and items[0]["id"]
        assert items[1]["error"]["type"] == "/problems/image-too-small"
        assert items[2]["error"]["status"] == 422 and items[2]["id"] is None

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("photos/one.png", variant(8))
            z.writestr("photos/", b"")
            z.writestr("__MACOSX/photos/._one.png", b"junk")
            z.writestr("photos/two.png", variant(9))
            z.writestr("photos/notes.txt", b"not an image")
        archive = buf.getvalue()
        headers = {"Idempotency-Key": "k-1"}
        r = http.post("/v1/batches", files={"archive": ("p.zip", archive, "application/zip")},
                      data=TINY, headers=headers)
        assert r.status_code == 202, r.text
        b = r.json()
        assert [i["filename"] for i in b["items"]] == ["photos/one.png", "photos/two.png",
                                                       "photos/notes.txt"]
        assert b["counts"]["failed"] == 1 and b["items"][2]["error"]["status"] == 415
        again = http.post("/v1/batches", files={"archive": ("p.zip", archive,
                                                            "application/zip")},
                          data=TINY, headers=headers)
        assert again.status_code == 202 and again.json()["id"] == b["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert len(clean_redis.keys("pda:batch:b_*:items")) == 2  # nothing new stored
        junk = http.post("/v1/batches", files={"archive": ("p.zip", b"junk", "application/zip")},
                         data=TINY)
        assert junk.status_code == 202 and junk.json()["status"] == "finished"
        (item,) = junk.json()["items"]
        assert item["filename"] == "p.zip" and item["error"]["status"] == 415
        other = post_batch(http, [("z.png", variant(10))], headers=headers)
        assert_problem(other, 409, "Idempotency-Key")
        # an identical item is the existing job (deduplicated)
        dup = post_batch(http, [("again.png", variant(8))]).json()
        assert dup["items"][0]["id"] == b["items"][0]["id"]
        # unknown, and another key's, batches are 404
        assert_problem(http.get("/v1/batches/b_nope"), 404)
        assert_problem(http.delete("/v1/batches/nope"), 404)


@pytest.mark.slow  # a real worker
def test_an_interactive_job_runs_before_the_batch_items_still_waiting(
        clean_redis, start_worker):
    settings = make_settings(batch_in_flight=1)
    worker = start_worker(settings, PDA_BATCH_IN_FLIGHT="1")
    with app_with(settings, worker) as http:
        batch = post_batch(http, [(f"{k}.png", variant(k)) for k in range(4)], BIG).json()

        def first_running():
            b = http.get(f"/v1/batches/{batch['id']}").json()
            return b["items"][0]["status"] != "queued"

        wait_until("the first item to start", first_running, timeout=120)
        single = http.post("/v1/explanations", files={"image": ("s.png", variant(20))},
                           data=TINY).json()
        wait_batch(http, batch["id"])
        job = http.get(f"/v1/explanations/{single['id']}").json()
        assert job["status"] == "finished"
        starts = [http.get(f"/v1/explanations/{i['id']}").json()["started_at"]
                  for i in batch["items"]]
        # the worker took the single job next: at most the item in progress and the one
        # message in flight (PDA_BATCH_IN_FLIGHT=1) ran before it
        assert sum(s < job["started_at"] for s in starts) <= 2, (starts, job["started_at"])
        assert sum(s > job["started_at"] for s in starts) >= 2


@pytest.mark.slow  # a real worker
def test_two_keys_batches_take_turns(clean_redis, start_worker):
    settings = make_settings(batch_in_flight=1, api_keys="k1,k2")
    worker = start_worker(settings, PDA_BATCH_IN_FLIGHT="1", PDA_API_KEYS="k1,k2")
    with app_with(settings, worker) as http:
        one, two = {"X-API-Key": "k1"}, {"X-API-Key": "k2"}
        a = post_batch(http, [(f"a{k}.png", variant(k)) for k in range(4)], TINY, one).json()
        b = post_batch(http, [(f"b{k}.png", variant(k + 10)) for k in range(4)], TINY,
                       two).json()
        assert http.get(f"/v1/batches/{a['id']}", headers=two).status_code == 404
        wait_batch(http, a["id"], headers=one)
        wait_batch(http, b["id"], headers=two)
        starts = []
        for who, batch, h in (("a", a, one), ("b", b, two)):
            for item in batch["items"]:
                job = http.get(f"/v1/explanations/{item['id']}", headers=h).json()
                starts.append((job["started_at"], who))
        order = "".join(who for _, who in sorted(starts))
        # b's first item ran before a's last ones: the keys took turns, not a then b
        assert order.index("b") <= 3 and order.rindex("a") > order.index("b"), order
        assert order.count("ab") + order.count("ba") >= 3, order


@pytest.mark.slow  # real worker and server processes
def test_a_batch_calls_back_once_when_it_ends_and_its_stream_ends_with_it(
        clean_redis, start_server, start_worker):
    import base64

    import httpx
    from standardwebhooks import Webhook

    from tests.service.test_events import events
    from tests.support.receiver import Receiver

    secret = "whsec_" + base64.b64encode(b"pda batch callback tests: 32 byt").decode()
    fast = {"PDA_WEBHOOK_SECRET": secret, "PDA_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
            "PDA_CALLBACK_RETRY_BASE_SECONDS": "0.2", "PDA_CALLBACK_TIMEOUT_SECONDS": "1"}
    settings = make_settings()
    rx = Receiver()
    try:
        server = start_server(settings, **fast)
        start_worker(settings, **fast)
        r = post_batch(server.http, [("a.png", variant(1)), ("bad.png", b""),
                                     ("c.png", variant(3))], TINY | {"callback_url": rx.url})
        assert r.status_code == 202, r.text
        batch = r.json()
        assert batch["callbacks"] == [{"url": rx.url, "status": "waiting", "event_id": None,
                                       "type": None, "attempts": 0, "last_status": None,
                                       "last_error": None, "last_attempt_at": None,
                                       "next_attempt_at": None, "delivered_at": None}]
        with httpx.stream("GET", f"{server.url}/v1/batches/{batch['id']}/events",
                          timeout=httpx.Timeout(10, read=120)) as s:
            assert s.status_code == 200
            got = list(events(s))
        ids = [i for i, _, _ in got]
        assert ids == sorted(set(ids)) and got[-1][1]["status"] == "finished", ids
        done = [d["progress"]["done"] for _, d, _ in got]
        assert done == sorted(done) and done[-1] == 34
        wait_until("the batch's event", lambda: rx.events(), timeout=60)
        (event,) = [Webhook(secret).verify(x.body, x.headers) for x in rx.events()]
        assert event["type"] == "batch.finished"
        now = server.http.get(f"/v1/batches/{batch['id']}").json()
        assert {k: v for k, v in event["data"].items() if k != "callbacks"} == \
            {k: v for k, v in now.items() if k != "callbacks"}
        # the delivery's state is part of the resource, so once it is delivered the ended
        # batch's stream sends that version (at or after the final event's) and closes, and
        # resuming after it sends nothing more
        wait_until("the delivery's state", lambda: server.http.get(
            f"/v1/batches/{batch['id']}").json()["callbacks"][0]["status"] == "delivered",
            timeout=60)
        with httpx.stream("GET", f"{server.url}/v1/batches/{batch['id']}/events",
                          timeout=httpx.Timeout(10, read=60)) as s:
            (final,) = list(events(s))
        assert final[0] >= ids[-1] and final[1]["status"] == "finished"
        assert final[1]["callbacks"][0]["status"] == "delivered"
        r = server.http.get(f"/v1/batches/{batch['id']}/events",
                            headers={"Last-Event-ID": str(final[0])})
        assert r.status_code == 204
        assert len(rx.events()) == 1  # once
    finally:
        rx.close()


@pytest.mark.slow  # real worker processes, one killed mid-item
def test_a_worker_killed_mid_batch_loses_no_item_and_reruns_only_the_lost_one(
        clean_redis, start_worker):
    import signal

    settings = make_settings(batch_in_flight=1)
    env = {"PDA_BATCH_IN_FLIGHT": "1", "PDA_STALE_JOB_SECONDS": "3",
           "PDA_BACKEND": "torch", "PDA_INCREMENTAL": "off"}
    first = start_worker(settings, **env)
    with app_with(settings, first) as http:
        batch = post_batch(http, [(f"{k}.png", variant(k)) for k in range(3)], BIG).json()

        def second_item_sweeping():
            b = http.get(f"/v1/batches/{batch['id']}").json()
            job = http.get(f"/v1/explanations/{b['items'][1]['id']}").json()
            return b["items"][0]["status"] == "finished" and job["progress"]["done"] > 0

        wait_until("the second item to sweep", second_item_sweeping, timeout=240)
        first.stop(signal.SIGKILL)
        start_worker(settings, **env)
        done = wait_batch(http, batch["id"], timeout=300)
        assert done["counts"]["finished"] == 3, done
        attempts = [http.get(f"/v1/explanations/{i['id']}").json()["attempt"]
                    for i in done["items"]]
        assert attempts == [1, 2, 1], attempts  # only the lost item ran again


@pytest.mark.slow  # a real worker and a Redis restarted under it
def test_a_redis_restart_mid_batch_loses_no_item_and_reruns_no_finished_one(
        tmp_path, start_worker):
    from tests.support.servers import RedisServer

    own = RedisServer(tmp_path / "redis", appendonly=True)  # as deployed: docs/deploy.md
    try:
        settings = make_settings(redis_url=own.url, batch_in_flight=1)
        env = {"PDA_BATCH_IN_FLIGHT": "1", "PDA_BACKEND": "torch", "PDA_INCREMENTAL": "off"}
        worker = start_worker(settings, **env)
        with app_with(settings, worker) as http:
            batch = post_batch(http, [(f"{k}.png", variant(k)) for k in range(3)], BIG).json()

            def first_finished():
                b = http.get(f"/v1/batches/{batch['id']}").json()
                return b if b["items"][0]["status"] == "finished" else None

            before = wait_until("the first item to finish", first_finished, timeout=240)
            first = http.get(f"/v1/explanations/{before['items'][0]['id']}").json()
            own.stop()  # the worker is on the second item, or between items
            own.start()
            done = wait_batch(http, batch["id"], timeout=300)
            assert done["status"] == "finished" and done["counts"]["finished"] == 3, done
            again = http.get(f"/v1/explanations/{first['id']}").json()
            # the item that had finished is not run again
            assert (again["attempt"], again["finished_at"]) == (1, first["finished_at"])
            archive = http.get(f"/v1/batches/{batch['id']}/results.zip")
            assert archive.status_code == 200
            with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
                summary = json.loads(z.read("summary.json"))
            assert [i["status"] for i in summary["items"]] == ["finished"] * 3
        assert worker.proc.poll() is None, worker.log.read_text()[-2000:]
    finally:
        own.stop()
