"""Hostile input and access: byte and pixel caps, a corpus of bad files, parameter bounds,
API keys on every route, and the back-pressure limits (real Redis, no worker needed)."""

from __future__ import annotations

import select
import socket
import time

import pytest
from fastapi.testclient import TestClient

from pda import keys
from pda.errors import ProblemError as Problem
from pda.jobs.store import JobStore, new_job_id
from pda.problems import status_of
from service.limits import _rate_wait, check_rate
from tests.support.corpus import CORPUS, GOOD, encode, photo
from tests.support.paths import CAT
from tests.support.service import SMALL, assert_problem, make_settings, submit

PNG = CAT.read_bytes()


def app_client(**overrides) -> TestClient:
    from service.main import create_app

    return TestClient(create_app(make_settings(**overrides), start_worker=False),
                      raise_server_exceptions=False)


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_bad_file_gets_the_right_4xx_and_says_why(client, name):
    data, status, words = CORPUS[name]
    body = assert_problem(submit(client, image=data, name=name), status, words)
    assert "\n" not in body["detail"] and len(body["detail"]) < 300
    assert client.app.state.pda.queue.count == 0


@pytest.mark.parametrize("name", list(GOOD))
def test_unusual_but_valid_images_are_accepted(client, name):
    data, (w, h) = GOOD[name]
    r = submit(client, image=data, name=name, data={"window": "56", "stride": "56"})
    assert r.status_code == 202, r.text
    assert (r.json()["image"]["width"], r.json()["image"]["height"]) == (w, h)


def test_a_configured_pixel_cap_is_the_one_applied(clean_redis):
    with app_client(max_image_pixels=10_000) as c:
        assert_problem(submit(c, image=encode(photo(200, 100), "PNG")), 413, "limit is 10000")


# --- parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("data,field", [
    ({"layer": "a" * 201}, "layer"),
    ({"target": ",".join(str(i) for i in range(21))}, "target"),
    ({"target": "top21"}, "target"),
    ({"target": "1,1"}, "target"),
    ({"window": "513"}, "window"),
    ({"padding": "33"}, "padding"),
    ({"samples": "1001"}, "samples"),
    ({"seed": str(2**31)}, "seed"),
    ({"seed": "-1"}, "seed"),
    ({"fill": "0.5,0.5"}, "fill"),
    ({"window": "1e3"}, "window"),
])
def test_parameters_out_of_bounds_name_the_field(client, data, field):
    body = assert_problem(submit(client, data={**SMALL, **data}), 422)
    assert body["errors"][0]["field"].split(".")[0] == field  # fill.2: its third value
    assert body["detail"].startswith(field)


def test_oversized_headers_and_form_abuse_are_caller_errors(client):
    assert_problem(submit(client, headers={"Idempotency-Key": "k" * 201}), 422,
                   field="header.idempotency-key")
    many = {f"f{i}": "1" for i in range(60)}
    assert_problem(submit(client, data=many), 400)
    r = client.post("/v1/explanations", json={"image_base64": "aGk=", "params": [1, 2]})
    assert_problem(r, 422, field="params")
    assert_problem(client.get("/v1/explanations/" + "x" * 5000), 404)


def test_json_uploads_over_the_cap_answer_413(clean_redis):
    import base64

    with app_client(max_upload_bytes=10_000) as c:
        r = c.post("/v1/explanations", json={"image_base64": base64.b64encode(PNG).decode()})
        assert_problem(r, 413, "10000 bytes")


def http_exchange(port: int, head: bytes, chunks=()) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` until the server answers; (response, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for chunk in chunks:
            if select.select([s], [], [], 0.02)[0]:
                break  # answered already (paced, so "already" is measurable)
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = b""
        while b"\r\n\r\n" not in response:
            part = s.recv(65536)
            if not part:
                break
            response += part
    return response, sent


@pytest.mark.slow
def test_bodies_over_the_cap_are_refused_before_they_are_read(settings, start_server):
    server = start_server(settings, PDA_MAX_UPLOAD_BYTES="100000")
    # declared too large: answered at once, though no byte of the body was sent
    for path in ("/v1/explanations", "/v1/predictions"):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                "boundary=b\r\nContent-Length: 1000000000\r\n\r\n").encode()
        t = time.perf_counter()
        response, _ = http_exchange(server.port, head)
        assert response.startswith(b"HTTP/1.1 413"), response
        assert time.perf_counter() - t < 5
    # chunked, no length declared: cut off once past the cap, long before the 20 MB planned
    head = (b"POST /v1/explanations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    part = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + b"\0" * 16000)
    chunk = b"%x\r\n%s\r\n" % (len(part), part)
    response, sent = http_exchange(server.port, head, [chunk] * 1250)
    assert response.startswith(b"HTTP/1.1 413"), response
    assert sent < 1_000_000, sent
    assert b"application/problem+json" in response
    # the server is fine afterwards
    assert server.http.get("/livez").status_code == 200


# --- access -----------------------------------------------------------------------------

PUBLIC = {"/livez", "/readyz", "/metrics"}


def test_every_api_route_needs_a_key_and_only_the_probes_are_public(clean_redis):
    with app_client(api_keys="alpha") as c:
        paths = c.get("/openapi.json").json()["paths"]  # the schema is public: no data
        checked = 0
        for template, ops in paths.items():
            path = template.replace("{job_id}", new_job_id()).replace("{name}", "x")
            for method in ops:
                r = c.request(method.upper(), path)
                if template in PUBLIC:
                    assert r.status_code in (200, 503), (template, r.text)  # 503: no worker
                else:
                    assert_problem(r, 401, "API key")
                    assert r.headers["www-authenticate"] == "Bearer"
                    checked += 1
        assert checked >= 9 and PUBLIC <= set(paths)
        # pages outside the schema (viewer, docs) are static: they hold no data
        for page in ("/", "/docs"):
            r = c.get(page)
            assert r.status_code == 404 or r.headers["content-type"].startswith("text/html")


def test_jobs_are_visible_only_to_their_creator(clean_redis):
    with app_client(api_keys="alpha,beta") as c:
        job_id = submit(c, headers={"X-API-Key": "alpha"}).json()["id"]
        for sub in ("", "/relevance", "/relevance.npy", "/overlay.png", "/input.png"):
            r = c.get(f"/v1/explanations/{job_id}{sub}", headers={"X-API-Key": "beta"})
            assert_problem(r, 404, "not yours")
            mine = c.get(f"/v1/explanations/{job_id}{sub}", headers={"X-API-Key": "alpha"})
            assert mine.status_code in (200, 409)
        assert_problem(c.delete(f"/v1/explanations/{job_id}", headers={"X-API-Key": "beta"}),
                       404)
        assert c.get(f"/v1/explanations/{job_id}",
                     headers={"Authorization": "Bearer alpha"}).json()["status"] == "queued"


def test_job_ids_are_unguessable():
    ids = {new_job_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


# --- back-pressure ----------------------------------------------------------------------

def test_rate_limit_answers_429_with_retry_after_per_key(clean_redis):
    with app_client(api_keys="alpha,beta", rate_limit_per_minute=5) as c:
        a, b = {"X-API-Key": "alpha"}, {"X-API-Key": "beta"}
        assert [c.get("/v1/models", headers=a).status_code for _ in range(5)] == [200] * 5
        r = c.get("/v1/models", headers=a)
        body = assert_problem(r, 429, "5 requests a minute")
        assert body["type"] == "/problems/rate-limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert c.get("/v1/models", headers=b).status_code == 200  # another key's budget
        assert c.get("/livez").status_code == 200  # probes are never limited


def test_the_sliding_window_forgets_last_minute_gradually(clean_redis):
    t0 = 6000.0  # the start of a minute
    for i in range(10):
        check_rate(clean_redis, "k", 10, now=t0 + i)
    with pytest.raises(Problem) as info:
        check_rate(clean_redis, "k", 10, now=t0 + 30)
    assert status_of(info.value) == 429 and info.value.headers["Retry-After"] == "36"
    with pytest.raises(Problem):  # next minute, last minute still weighs 10 * 59/60
        check_rate(clean_redis, "k", 10, now=t0 + 61)
    check_rate(clean_redis, "k", 10, now=t0 + 66)  # 10 * 54/60 + 1 = 10: fits
    assert _rate_wait(10, 5, 10, 0.0) == 30  # 10 * (60 - t)/60 + 5 <= 10 at t = 30


def test_queued_cap_per_key_is_429_and_cache_hits_pass(clean_redis):
    with app_client(api_keys="alpha,beta", max_queued_per_key=2) as c:
        a = {"X-API-Key": "alpha"}
        first = submit(c, data={**SMALL, "seed": "1"}, headers={**a, "Idempotency-Key": "i1"})
        second = submit(c, data={**SMALL, "seed": "2"}, headers=a)
        assert first.status_code == second.status_code == 202
        r = submit(c, data={**SMALL, "seed": "3"}, headers=a)
        assert_problem(r, 429, "2 jobs waiting")
        assert r.headers["retry-after"] == "5"
        # the same request again, or a retry under its Idempotency-Key, creates nothing
        again = submit(c, data={**SMALL, "seed": "2"}, headers=a)
        assert again.status_code == 202 and again.json()["id"] == second.json()["id"]
        retry = submit(c, data={**SMALL, "seed": "1"}, headers={**a, "Idempotency-Key": "i1"})
        assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]
        assert submit(c, data={**SMALL, "seed": "3"},
                      headers={"X-API-Key": "beta"}).status_code == 202
        # cancelling one frees its place at once
        assert c.delete(f"/v1/explanations/{first.json()['id']}", headers=a).status_code == 200
        assert submit(c, data={**SMALL, "seed": "3"}, headers=a).status_code == 202
        assert c.app.state.pda.queue.count == 3


def test_global_queue_cap_is_503_with_retry_after(clean_redis):
    with app_client(max_queue_length=2) as c:
        ids = [submit(c, data={**SMALL, "seed": str(s)}).json()["id"] for s in range(2)]
        r = submit(c, data={**SMALL, "seed": "9"})
        body = assert_problem(r, 503, "PDA_MAX_QUEUE_LENGTH")
        assert body["type"] == "/problems/queue-full" and r.headers["retry-after"] == "10"
        assert submit(c, data={**SMALL, "seed": "0"}).json()["id"] == ids[0]  # cache hit


def queued_of(store: JobStore, caller: str, grace: float = 60.0) -> list[str]:
    """The caller's jobs that count against the cap now, as JobStore.reserve counts them."""
    members = store.r.zrange(keys.open_jobs(caller), 0, -1, withscores=True)
    return store._classify(members, time.time(), grace)[0]


def test_the_queued_count_follows_the_records_through_every_transition(clean_redis):
    store = JobStore(clean_redis)

    def make(job_id: str) -> None:
        assert store.reserve("k", job_id, cap=10) is not None
        store.create({"id": job_id, "status": "queued", "attempt": 1, "owner": "k"}, b"", 60)

    for j in ("a", "b", "c", "d"):
        make(j)
    assert sorted(queued_of(store, "k")) == ["a", "b", "c", "d"]
    assert store.mark_running("a", "w", 1) and not store.mark_running("a", "w2", 1)
    store.end("b", "canceled")
    assert sorted(queued_of(store, "k")) == ["c", "d"]
    assert store.requeued("a", 2)  # a worker gave it back: waiting again
    assert sorted(queued_of(store, "k")) == ["a", "c", "d"]
    assert store.mark_running("a", "w", 2) and store.finish("a", {"x": b"1"}, attempt=2)
    store.end("c", "failed")
    assert queued_of(store, "k") == ["d"]
    assert not store.requeued("c", 2)  # an ended job is never revived
    # a reservation whose record never got written counts only for its grace period
    assert store.reserve("k", "ghost", cap=10) == 1
    assert sorted(queued_of(store, "k")) == ["d", "ghost"]
    assert queued_of(store, "k", grace=0) == ["d"]
    assert store.reserve("k", "e", cap=3) == 2 and store.reserve("k", "f", cap=3) is None
