"""``GET /v1/explanations/{id}/events``: a real job followed to its end over a real
``pda serve`` (server-sent events), resumed with Last-Event-ID, and many streams that
share one poller instead of a thread and a Redis connection each."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from pda.jobs.store import JobStore
from tests.support.service import assert_problem, post, submit
from tests.support.waiting import wait_until

#: 14 x 14 windows, constant sampler: 197 forward passes, progress in batches of 8
BIG = {"window": "16", "stride": "16", "sampler": "constant", "samples": "1",
       "faithfulness": "false"}


def events(response: httpx.Response) -> Iterator[tuple[int, dict, float]]:
    """(id, data, when it arrived) of each event of a text/event-stream response; comments
    and the retry field are skipped."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield int(fields["id"]), json.loads(fields["data"]), time.monotonic()
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def stream(url: str, job_id: str, **headers: str) -> tuple[int, list[tuple[int, dict, float]]]:
    """The status and every event of one stream, read until the server closes it."""
    with httpx.stream("GET", f"{url}/v1/explanations/{job_id}/events", headers=headers,
                      timeout=httpx.Timeout(10, read=60)) as r:
        if r.status_code != 200:
            return r.status_code, []
        assert r.headers["content-type"].startswith("text/event-stream")
        return 200, list(events(r))


@pytest.mark.slow  # a real worker
def test_a_real_job_streams_to_its_final_event_and_progress_never_goes_back(
        settings, start_server, start_worker):
    server = start_server(settings)
    start_worker(settings, PDA_BACKEND="torch", PDA_INCREMENTAL="off")  # batches of 8
    job = post(server, BIG)
    started = time.monotonic()
    status, got = stream(server.url, job["id"])
    took = time.monotonic() - started
    assert status == 200 and len(got) >= 3, got
    ids = [i for i, _, _ in got]
    assert ids == sorted(set(ids)), ids  # strictly increasing versions
    done = [d["progress"]["done"] for _, d, _ in got]
    assert done == sorted(done) and done[-1] == 197, done
    assert any(0 < n < 197 for n in done), done  # it saw the sweep move
    assert [d["status"] for _, d, _ in got][-1] == "finished"
    assert all(d["status"] != "finished" for _, d, _ in got[:-1])
    assert len(got) <= 4 * took + 2  # at most about 4 a second
    # the last event is the job exactly as GET returns it now
    assert got[-1][1] == server.http.get(f"/v1/explanations/{job['id']}").json()

    # resumed after its first event: only what is newer, which is the final one
    status, resumed = stream(server.url, job["id"], **{"Last-Event-ID": str(ids[0])})
    assert status == 200 and [i for i, _, _ in resumed] == [ids[-1]]
    # an ended job's fresh stream: the final event, then the end
    status, fresh = stream(server.url, job["id"])
    assert [(i, d["status"]) for i, d, _ in fresh] == [(ids[-1], "finished")]
    # resumed after the final event: nothing to send, and EventSource stops on a 204
    assert stream(server.url, job["id"], **{"Last-Event-ID": str(ids[-1])})[0] == 204


def test_a_stream_of_an_unknown_or_anothers_job_is_404(settings, clean_redis):
    from fastapi.testclient import TestClient

    from service.main import create_app

    keyed = settings.model_copy(update={"api_keys": "k1,k2"})
    with TestClient(create_app(keyed, start_worker=False)) as client:
        job = submit(client, BIG, headers={"X-API-Key": "k1"}).json()
        assert_problem(client.get("/v1/explanations/nope/events",
                                  headers={"X-API-Key": "k1"}), 404)
        assert_problem(client.get(f"/v1/explanations/{job['id']}/events",
                                  headers={"X-API-Key": "k2"}), 404)
        assert_problem(client.get(f"/v1/explanations/{job['id']}/events"), 401)


def _threads(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


@pytest.mark.slow  # a real server and 50 streams
def test_many_streams_share_one_poller_not_a_thread_or_connection_each(
        settings, start_server, clean_redis):
    server = start_server(settings)  # no worker: the job stays queued, its streams open
    job = post(server, BIG)
    store = JobStore(redis.Redis.from_url(settings.redis_url))
    clients = lambda: len(clean_redis.client_list())  # noqa: E731
    stream(server.url, "warm-up-404")  # the API's pool opens its connections
    before_clients, before_threads = clients(), _threads(server.proc.pid)

    n, seen, lock = 50, [], threading.Lock()
    first = [threading.Event() for _ in range(n)]

    def follow(i: int) -> None:
        with httpx.stream("GET", f"{server.url}/v1/explanations/{job['id']}/events",
                          timeout=httpx.Timeout(10, read=60)) as r:
            for _, data, _ in events(r):
                if data["progress"]["done"] == 0:
                    first[i].set()
                else:
                    with lock:
                        seen.append(data["progress"]["done"])
                    return

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(n)]
    for i, t in enumerate(threads):  # one after the other: no burst of requests at once
        t.start()
        assert first[i].wait(timeout=30), f"stream {i} got no first event"
    # 50 open streams hold no Redis connection and no thread of their own
    assert clients() <= before_clients + 2, (before_clients, clients())
    assert "pda_event_streams 50.0" in server.http.get("/metrics").text
    assert _threads(server.proc.pid) <= before_threads + 4, before_threads
    store.set_progress(job["id"], 64, 197)  # as a worker would
    changed = time.monotonic()
    wait_until("every stream to get the change", lambda: len(seen) == n, timeout=30)
    assert time.monotonic() - changed < 5 and set(seen) == {64}
    for t in threads:
        t.join(timeout=10)
    # each client hung up after its event: the server lets go of its stream at once (the
    # next keep-alive, which would also tell it, is 15 s away)
    wait_until("the streams closed on the server", lambda: "pda_event_streams 0.0" in
               server.http.get("/metrics").text, timeout=5, every=0.2)
