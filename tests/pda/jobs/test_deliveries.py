"""pda/jobs/deliveries.py and the store's outbox: a job's end and its callbacks' events in
one transaction, the lease of an attempt, the schedule of retries, the repair of what is
due, and each outcome mirrored into the job's record. Real Redis, no worker processes."""

from __future__ import annotations

import json
import time

import pytest
import redis
from rq import Queue

from pda import keys
from pda.errors import CallbackNotAllowedError, CallbacksOffError
from pda.jobs import deliveries
from pda.jobs.deliveries import Deliveries
from pda.jobs.lifecycle import cancel, fail
from pda.jobs.record import JobRecord, JobStatus
from pda.jobs.store import JobStore, new_job_id
from pda.settings import Settings
from tests.support.service import make_settings

from .conftest import RESULT_TTL

URL = "https://hooks.example.com/pda"


@pytest.fixture
def settings(conn: redis.Redis) -> Settings:
    return make_settings(result_ttl_seconds=RESULT_TTL, callback_retry_base_seconds=10,
                         webhook_secret="whsec_" + "QUJD" * 8,
                         callback_allowed_hosts="hooks.example.com,10.0.0.0/8")


@pytest.fixture
def store(conn: redis.Redis, settings: Settings) -> JobStore:
    return JobStore(conn, result_ttl=RESULT_TTL, queue_name=settings.queue_name)


@pytest.fixture
def outbox(conn: redis.Redis, settings: Settings) -> Deliveries:
    return Deliveries(conn, settings)


def running_job(store: JobStore, callbacks: list[str] | None = (URL,)) -> str:
    job_id = new_job_id()
    store.create(JobRecord(id=job_id, status=JobStatus.QUEUED, owner="o", model="m",
                           planned_passes=99, progress_total=99,
                           callbacks=[deliveries.waiting(u) for u in callbacks]
                           if callbacks else None), b"img", live_seconds=600)
    assert store.mark_running(job_id, "w:1", 1)
    return job_id


def messages(conn: redis.Redis, settings: Settings) -> list[tuple]:
    """(function, args) of every message on the callbacks queue."""
    q = Queue(deliveries.queue_name(settings), connection=conn)
    return [(j.func_name, j.args) for j in q.jobs]


def test_finishing_a_job_writes_its_event_in_the_same_transaction(store, conn, settings):
    job_id = running_job(store, [URL, "http://10.0.0.7/x"])
    assert store.finish(job_id, {"document.json": b"{}"}, 1, forward_passes=99)
    rec = store.get(job_id)
    assert rec.status == JobStatus.FINISHED
    assert [e["status"] for e in rec.callbacks] == ["pending", "pending"]
    ids = [e["event_id"] for e in rec.callbacks]
    assert len(set(ids)) == 2 and all(i.startswith("msg_") for i in ids)
    for entry in rec.callbacks:
        d = Deliveries(conn, settings).get(entry["event_id"])
        assert (d["type"], d["url"], d["state"], d["attempts"]) == (
            "explanation.finished", entry["url"], "pending", 0)
        # the data is the record as the job ended: what the event's body is rendered from
        assert d["data"]["status"] == "finished" and d["data"]["forward_passes"] == 99
        assert d["data"]["version"] == rec.version and d["data"]["callbacks"] == rec.callbacks
    assert sorted(m[1][0] for m in messages(conn, settings)) == sorted(ids)
    assert sorted(m.decode() for m in conn.zrange(keys.DELIVERIES_DUE, 0, -1)) == sorted(ids)
    assert {m[0] for m in messages(conn, settings)} == {"worker.deliveries.deliver"}


def test_a_job_without_callbacks_writes_no_event(store, conn, settings):
    job_id = running_job(store, None)
    assert store.finish(job_id, {"document.json": b"{}"}, 1)
    assert store.get(job_id).callbacks is None
    assert conn.zcard(keys.DELIVERIES_DUE) == 0 and messages(conn, settings) == []


def test_cancel_and_fail_send_their_events_and_an_ended_job_sends_no_second(
        store, conn, settings):
    queue = Queue(settings.queue_name, connection=conn)
    canceled = running_job(store)
    rec = cancel(store, queue, store.get(canceled))
    assert rec.callbacks[0]["type"] == "explanation.canceled"
    failed = running_job(store)
    fail(store, failed, "m", {"type": "/problems/job-failed", "title": "t", "status": 500,
                              "detail": "d"})
    assert store.get(failed).callbacks[0]["type"] == "explanation.failed"
    finished = running_job(store)
    assert store.finish(finished, {"document.json": b"{}"}, 1)
    first = store.get(finished).callbacks
    cancel(store, queue, store.get(finished))  # a DELETE of a finished job
    assert store.get(finished).status == JobStatus.CANCELED
    assert store.get(finished).callbacks == first
    assert len(messages(conn, settings)) == 3


def test_an_end_without_notify_sends_nothing(store, conn, settings):
    job_id = running_job(store)
    assert store.end(job_id, JobStatus.CANCELED, notify=False)
    assert store.get(job_id).callbacks == [deliveries.waiting(URL)]
    assert messages(conn, settings) == []


def test_add_callback_waits_on_an_active_job_and_sends_at_once_for_an_ended_one(
        store, conn, settings):
    job_id = running_job(store)
    store.add_callback(job_id, "http://10.0.0.1/a")
    store.add_callback(job_id, URL)  # the same URL again: still one
    assert [(e["url"], e["status"]) for e in store.get(job_id).callbacks] == [
        (URL, "waiting"), ("http://10.0.0.1/a", "waiting")]
    assert store.finish(job_id, {"document.json": b"{}"}, 1)
    rec = store.add_callback(job_id, "http://10.0.0.2/late")
    late = rec.callbacks[-1]
    assert (late["url"], late["status"], late["type"]) == (
        "http://10.0.0.2/late", "pending", "explanation.finished")
    assert len(messages(conn, settings)) == 3
    for i in range(deliveries.MAX_CALLBACKS - 3):
        store.add_callback(job_id, f"http://10.0.1.{i}/")
    with pytest.raises(CallbackNotAllowedError, match="has 10 callback URLs"):
        store.add_callback(job_id, "http://10.0.2.1/")


def test_a_claim_holds_the_delivery_and_the_outcome_is_mirrored(store, conn, outbox):
    job_id = running_job(store)
    store.finish(job_id, {"document.json": b"{}"}, 1)
    did = store.get(job_id).callbacks[0]["event_id"]
    claimed = outbox.claim(did)
    assert claimed is not None and outbox.claim(did) is None  # held by the first
    version = store.get(job_id).version
    assert outbox.record(claimed, status=503, body='{"b":1}') == "retry"
    d = outbox.get(did)
    assert (d["attempts"], d["last_status"], d["state"], d["body"]) == (1, 503, "pending",
                                                                        '{"b":1}')
    assert 7.5 <= d["next_at"] - time.time() <= 12.5  # base 10 s, +-25 %
    assert conn.zscore(keys.DELIVERIES_DUE, did) == pytest.approx(d["next_at"])
    rec = store.get(job_id)
    assert rec.version == version + 1
    entry = rec.callbacks[0]
    assert (entry["status"], entry["attempts"], entry["last_status"]) == ("pending", 1, 503)
    assert entry["next_attempt_at"] == deliveries.iso(d["next_at"])
    assert outbox.claim(did) is None  # not due for another 10 s
    conn.hset(keys.delivery(did), "next_at", json.dumps(time.time()))  # as if 10 s passed
    again = outbox.claim(did)
    assert outbox.record(claimed, status=200) == "lost"  # the old holder writes nothing
    assert outbox.record(again, status=204) == "delivered"
    entry = store.get(job_id).callbacks[0]
    assert (entry["status"], entry["attempts"], entry["last_status"]) == ("delivered", 2, 204)
    assert entry["next_attempt_at"] is None and entry["delivered_at"]
    assert conn.zscore(keys.DELIVERIES_DUE, did) is None
    conn.hset(keys.delivery(did), "next_at", json.dumps(0))
    assert outbox.claim(did) is None  # never sent again after a 2xx


def test_the_last_failed_attempt_gives_up(store, outbox):
    job_id = running_job(store)
    store.finish(job_id, {"document.json": b"{}"}, 1)
    did = store.get(job_id).callbacks[0]["event_id"]
    for n in range(1, deliveries.MAX_ATTEMPTS + 1):
        outbox.r.hset(keys.delivery(did), "next_at", json.dumps(0))
        outcome = outbox.record(outbox.claim(did), error="ConnectionRefusedError")
        assert outcome == ("failed" if n == deliveries.MAX_ATTEMPTS else "retry")
    entry = store.get(job_id).callbacks[0]
    assert (entry["status"], entry["attempts"], entry["last_error"]) == (
        "failed", 10, "ConnectionRefusedError")


def test_the_schedule_starts_within_30_s_and_spans_hours():
    waits = deliveries.schedule(10.0)
    assert waits[0] == 10 and max(waits) == 4 * 3600
    assert waits == sorted(waits) and sum(waits) / 3600 > 15
    assert deliveries.backoff(1, 10, rand=lambda: 1.0) == 12.5
    assert deliveries.backoff(1, 10, rand=lambda: 0.0) == 7.5
    assert deliveries.backoff(30, 10, rand=lambda: 0.5) == 4 * 3600


def test_the_repair_enqueues_what_is_due_once(store, conn, settings, outbox):
    job_id = running_job(store)
    store.finish(job_id, {"document.json": b"{}"}, 1)
    did = store.get(job_id).callbacks[0]["event_id"]
    Queue(deliveries.queue_name(settings), connection=conn).empty()  # the message is lost
    assert outbox.enqueue_due() == []  # its grace has not passed
    later = time.time() + deliveries.ENQUEUE_GRACE + 1
    assert outbox.enqueue_due(now=later) == [did]
    assert outbox.enqueue_due(now=later) == []  # one repair per due entry
    assert [m[1] for m in messages(conn, settings)] == [(did,)]
    claimed = outbox.claim(did)
    outbox.record(claimed, status=200)
    assert outbox.enqueue_due(now=later + 10 ** 6) == []


def test_an_attempt_whose_worker_died_is_made_again_after_its_lease(store, conn, outbox,
                                                                   settings):
    job_id = running_job(store)
    store.finish(job_id, {"document.json": b"{}"}, 1)
    did = store.get(job_id).callbacks[0]["event_id"]
    assert outbox.claim(did) is not None  # ... and the worker is killed mid-request
    lease = deliveries.lease_seconds(settings)
    assert outbox.enqueue_due(now=time.time() + lease - 2) == []
    assert outbox.enqueue_due(now=time.time() + lease + 1) == [did]
    conn.hset(keys.delivery(did), "lease_until", json.dumps(time.time() - 1))
    assert outbox.claim(did) is not None


def test_every_write_raises_the_version(store):
    job_id = new_job_id()
    store.create(JobRecord(id=job_id, status=JobStatus.QUEUED, owner="o", model="m",
                           planned_passes=99, progress_total=99), b"img", live_seconds=600)
    seen = [store.get(job_id).version]
    store.mark_running(job_id, "w:1", 1)
    seen.append(store.get(job_id).version)
    store.set_progress(job_id, 10, 99)
    seen.append(store.get(job_id).version)
    store.update(job_id, phase="sweeping")
    seen.append(store.get(job_id).version)
    store.finish(job_id, {"document.json": b"{}"}, 1)
    seen.append(store.get(job_id).version)
    assert seen == [1, 2, 3, 4, 5]


def test_check_url_refuses_while_callbacks_are_off(conn):
    on = make_settings(webhook_secret="whsec_" + "QUJD" * 8, callback_allowed_hosts="x.org")
    assert deliveries.check_url(on, "https://x.org/h") == "https://x.org/h"
    assert deliveries.check_url(on, None) is None
    with pytest.raises(CallbacksOffError, match="PDA_WEBHOOK_SECRET is not set"):
        deliveries.check_url(make_settings(callback_allowed_hosts="x.org"), "https://x.org/")
    with pytest.raises(CallbacksOffError, match="PDA_CALLBACK_ALLOWED_HOSTS names no host"):
        deliveries.check_url(make_settings(webhook_secret="whsec_" + "QUJD" * 8),
                             "https://x.org/")
    with pytest.raises(CallbackNotAllowedError, match="'y.org'"):
        deliveries.check_url(on, "https://y.org/")
