"""Signed callbacks end to end: real ``pda serve`` and ``pda worker`` processes on a
throwaway Redis, and a real receiver on loopback (tests/support/receiver.py) whose
requests are verified with the Standard Webhooks reference library."""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest
from standardwebhooks import Webhook

from tests.support.receiver import Receiver
from tests.support.servers import maintenance_ran_after
from tests.support.service import PNG, assert_problem, make_settings, post, submit
from tests.support.waiting import wait_until

SECRET = "whsec_" + base64.b64encode(b"pda callback tests: 32 bytes ...").decode()
#: 17 forward passes: a job of a second or two
TINY = {"window": "56", "stride": "56", "sampler": "constant", "samples": "1",
        "faithfulness": "false"}
#: fast retries (0.2 s, 0.8 s, ...), a 1 s timeout (a 3 s lease), beats every second
FAST = {"PDA_WEBHOOK_SECRET": SECRET, "PDA_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
        "PDA_CALLBACK_RETRY_BASE_SECONDS": "0.2", "PDA_CALLBACK_TIMEOUT_SECONDS": "1"}


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for rx in made:
        rx.close()


def verified(rx: Receiver) -> list[dict]:
    """Every request ``rx`` got, each verified as a receiver would (raises if one is not)."""
    return [Webhook(SECRET).verify(r.body, r.headers) for r in rx.events()]


@pytest.mark.slow  # real worker processes
def test_a_finished_job_is_posted_signed_and_a_503_is_retried_with_the_same_id(
        settings, start_server, start_worker, receivers, clean_redis):
    rx = receivers(answers=[503])  # then 200
    other = receivers()
    server = start_server(settings, **FAST)
    start_worker(settings, **FAST)
    job = post(server, {**TINY, "callback_url": f"{rx.url}/hook?from=pda"})
    # an identical request with another callback: the same job, which calls both
    again = post(server, {**TINY, "callback_url": other.url})
    assert again["id"] == job["id"]
    assert [c["url"] for c in again["callbacks"]] == [f"{rx.url}/hook?from=pda", other.url]
    assert {c["status"] for c in again["callbacks"]} == {"waiting"}

    wait_until("two attempts at the first receiver", lambda: len(rx.events()) >= 2,
               timeout=180, detail=lambda: server.http.get(f"/v1/explanations/{job['id']}")
               .json().get("callbacks"))
    first, second = rx.events()[:2]
    assert (first.answered, second.answered) == (503, 200)
    assert first.path == "/hook?from=pda"
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body  # the same event, byte for byte
    events = verified(rx)
    assert events[0]["type"] == "explanation.finished"
    data = events[0]["data"]
    final = wait_until("the delivery shown as delivered", lambda: (
        j := server.http.get(f"/v1/explanations/{job['id']}").json())["callbacks"][0][
        "status"] == "delivered" and j)
    # data is the job as GET returns it; only its callbacks' delivery state moved since
    assert {k: v for k, v in data.items() if k != "callbacks"} == \
        {k: v for k, v in final.items() if k != "callbacks"}
    assert data["status"] == "finished" and data["progress"]["done"] == 17
    shown = final["callbacks"][0]
    assert (shown["event_id"], shown["attempts"], shown["last_status"]) == (
        first.headers["webhook-id"], 2, 200)
    assert shown["next_attempt_at"] is None and shown["delivered_at"]
    # the second URL got the same event under its own id, once
    wait_until("the second receiver's event", lambda: other.events())
    (got,) = verified(other)
    assert got == events[0]
    assert other.events()[0].headers["webhook-id"] != first.headers["webhook-id"]
    # never again after a 2xx: two whole maintenance passes later, still two requests
    maintenance_ran_after(clean_redis, time.time())
    maintenance_ran_after(clean_redis, time.time())
    assert len(rx.events()) == 2 and len(other.events()) == 1


@pytest.mark.slow  # real worker processes
def test_a_delivery_survives_an_api_restart(settings, start_server, start_worker, receivers):
    rx = receivers(answers=[503, 503])
    server = start_server(settings, **FAST)
    start_worker(settings, **FAST)
    job = post(server, {**TINY, "callback_url": rx.url})
    server.stop()  # no API while the job ends and its event is tried, failed and retried
    wait_until("the delivery after two 503s", lambda: [r.answered for r in rx.events()]
               == [503, 503, 200], timeout=180)
    assert len({r.headers["webhook-id"] for r in rx.events()}) == 1
    again = start_server(settings, **FAST)
    shown = again.http.get(f"/v1/explanations/{job['id']}").json()["callbacks"][0]
    assert (shown["status"], shown["attempts"]) == ("delivered", 3)
    assert verified(rx)[0]["data"]["id"] == job["id"]


@pytest.mark.slow  # real worker processes
def test_a_delivery_survives_a_worker_restart(settings, start_server, start_worker,
                                              receivers):
    rx = receivers(answers=[0])  # the first attempt hangs: its worker is killed meanwhile
    server = start_server(settings, **FAST)
    worker = start_worker(settings, **FAST)
    job = post(server, {**TINY, "callback_url": rx.url})
    wait_until("the first attempt to arrive", lambda: rx.events(), timeout=180)
    worker.stop(signal.SIGKILL)
    rx.release()
    start_worker(settings, **FAST)  # its maintenance pass finds the lease run out
    wait_until("the attempt made again", lambda: len(rx.events()) >= 2, timeout=60)
    first, second = rx.events()[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert second.answered == 200 and first.body == second.body
    wait_until("the job to show it delivered", lambda: server.http.get(
        f"/v1/explanations/{job['id']}").json()["callbacks"][0]["status"] == "delivered")


@pytest.mark.slow  # real worker processes
def test_a_host_whose_name_resolves_to_a_disallowed_address_is_refused_at_delivery(
        settings, start_server, start_worker, receivers):
    rx = receivers()
    # the name is allowed, so the submit passes; it resolves to loopback, which no range
    # admits, so no attempt connects (DNS rebinding)
    named = {**FAST, "PDA_CALLBACK_ALLOWED_HOSTS": "localhost"}
    server = start_server(settings, **named)
    start_worker(settings, **named)
    job = post(server, {**TINY, "callback_url": f"http://localhost:{rx.port}/"})

    def refused_twice() -> dict | None:
        shown = (server.http.get(f"/v1/explanations/{job['id']}").json()["callbacks"]
                 or [{}])[0]
        return shown if shown.get("attempts", 0) >= 2 else None

    shown = wait_until("two refused attempts", refused_twice, timeout=180)
    assert shown["status"] == "pending" and shown["last_status"] is None
    assert "refused: localhost resolves to" in shown["last_error"], shown
    assert rx.events() == []


def test_callbacks_are_refused_at_submit_unless_allowed_and_signed(settings, clean_redis):
    from fastapi.testclient import TestClient

    from service.main import create_app

    on = make_settings(queue_name=settings.queue_name, webhook_secret=SECRET,
                       callback_allowed_hosts="127.0.0.1,hooks.example.com")
    with TestClient(create_app(on, start_worker=False)) as client:
        for url, needle in [("http://10.0.0.1/hook", "10.0.0.1: it is not in"),
                            ("https://evil.example.org/", "'evil.example.org'"),
                            ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
                            ("file:///etc/passwd", "http:// or https://")]:
            body = assert_problem(submit(client, {**TINY, "callback_url": url}), 422, needle,
                                  field="callback_url")
            assert body["type"] == "/problems/callback-not-allowed"
        r = client.post("/v1/explanations", json={
            "image_base64": base64.b64encode(PNG).decode(),
            "callback_url": "http://10.9.9.9/", "params": TINY})
        assert_problem(r, 422, "10.9.9.9", field="callback_url")
        assert submit(client, {**TINY, "callback_url": "https://hooks.example.com/x"}
                      ).status_code == 202
    assert clean_redis.keys("pda:delivery:*") == []
    # without a secret there is nothing to sign with: callbacks are off, and it says so
    with TestClient(create_app(settings, start_worker=False)) as client:
        body = assert_problem(submit(client, {**TINY, "callback_url": "http://127.0.0.1/"}),
                              422, "PDA_WEBHOOK_SECRET is not set", field="callback_url")
        assert body["type"] == "/problems/callbacks-off"
        assert submit(client, TINY).status_code == 202  # without a callback: as before


@pytest.mark.slow  # real worker processes
def test_a_delivery_survives_a_redis_restart(tmp_path, start_server, start_worker,
                                             receivers):
    from tests.support.servers import RedisServer

    own = RedisServer(tmp_path / "redis", appendonly=True)  # as deployed: docs/deploy.md
    try:
        settings = make_settings(redis_url=own.url)
        rx = receivers(answers=[503])
        slow_retry = {**FAST, "PDA_CALLBACK_RETRY_BASE_SECONDS": "3"}
        server = start_server(settings, **slow_retry)
        start_worker(settings, **slow_retry)
        post(server, {**TINY, "callback_url": rx.url})
        wait_until("the first attempt (503)", lambda: rx.events(), timeout=180)
        own.stop()  # the retry is due in about 3 s: Redis is away meanwhile
        own.start()
        wait_until("the retry after the restart", lambda: len(rx.events()) >= 2, timeout=60)
        first, second = rx.events()[:2]
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert (first.answered, second.answered) == (503, 200)
        assert len(verified(rx)) == 2
    finally:
        own.stop()


def test_the_openapi_document_declares_callbacks_exactly_when_they_are_on(settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    on = make_settings(queue_name=settings.queue_name, webhook_secret=SECRET,
                       callback_allowed_hosts="hooks.example.com")
    with TestClient(create_app(on, start_worker=False)) as client:
        doc = client.get("/openapi.json").json()
    op = doc["paths"]["/v1/explanations"]["post"]
    (declared,) = op["callbacks"]["explanation_event"].values()
    post_ = declared["post"]
    assert post_["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExplanationEvent"}
    assert {p["name"] for p in post_["parameters"] if p["in"] == "header"} == {
        "webhook-id", "webhook-timestamp", "webhook-signature"}
    assert set(post_["responses"]) == {"2XX", "default"}
    event = doc["components"]["schemas"]["ExplanationEvent"]
    assert event["properties"]["type"]["enum"] == [
        "explanation.finished", "explanation.failed", "explanation.canceled"]
    assert event["properties"]["data"]["$ref"].endswith("/ExplanationPublic")
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    body = op["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert form["callback_url"]["pattern"] == "^https?://" and "callback_url" in body
    assert "callback_url" in body["params"]["properties"]
    stream = doc["paths"]["/v1/explanations/{job_id}/events"]["get"]["responses"]
    assert set(stream["200"]["content"]) == {"text/event-stream"} and "204" in stream
    # off (no secret here): a request naming one is refused, so the document names none
    with TestClient(create_app(settings, start_worker=False)) as client:
        doc = client.get("/openapi.json").json()
    assert "callback_url" not in json.dumps(doc["paths"]["/v1/explanations"]["post"])
    assert "callbacks" not in doc["paths"]["/v1/explanations"]["post"]
    assert "ExplanationEvent" not in doc["components"]["schemas"]
