"""The batch feeder and a batch's end (pda.jobs.batches) on a real Redis, no workers: the
tests take the batch queue's messages themselves, as a worker would."""

from __future__ import annotations

import json

import pytest
from rq import Queue

from pda import keys
from pda.jobs import deliveries
from pda.jobs.batches import Batches, fair_eta, item_entry, new_batch_id
from pda.jobs.queue import batch_queue
from pda.jobs.record import JobRecord, JobStatus
from pda.jobs.store import JobStore, new_job_id
from tests.support.service import make_settings

from .conftest import RESULT_TTL


@pytest.fixture
def settings(conn):
    return make_settings(result_ttl_seconds=RESULT_TTL, batch_in_flight=2,
                         webhook_secret="whsec_" + "QUJD" * 8,
                         callback_allowed_hosts="127.0.0.1")


def make_batch(store: JobStore, batches: Batches, owner: str, n: int, *,
               refused: int | None = None, callback: str | None = None) -> tuple[str, list]:
    """A complete batch of ``n`` items, each a queued job not yet fed (item ``refused``
    has no job); its id and the items' job ids."""
    bid = new_batch_id()
    batches.begin(bid, owner=owner, model="m", params={}, callback_url=callback,
                  digest="d")
    jobs = []
    for i in range(n):
        if i == refused:
            batches.add(bid, item_entry(i, f"{i}.png", error={"status": 415}), 0)
            jobs.append(None)
            continue
        job_id = new_job_id()
        store.create(JobRecord(id=job_id, status=JobStatus.QUEUED, owner=owner, model="m",
                               planned_passes=10, progress_total=10, batch=bid),
                     b"img", live_seconds=600, index=False)
        batches.add(bid, item_entry(i, f"{i}.png", job=job_id, own=True), 10)
        jobs.append(job_id)
    batches.complete(bid)
    return bid, jobs


def take(queue: Queue) -> list[str]:
    """Every message on the queue, taken off it: the jobs they run (FIFO)."""
    out = []
    while (job := queue.dequeue_any([queue], timeout=None, connection=queue.connection)):
        out.append(job[0].args[0])
    return out


def owner_of(store: JobStore, job_id: str) -> str:
    return store.get(job_id).owner


def test_the_feeder_keeps_a_few_items_queued_and_takes_keys_in_turn(store, settings):
    batches = Batches(store, settings)
    queue = batch_queue(settings, store.r)
    _, a = make_batch(store, batches, "alice", 4)
    _, b = make_batch(store, batches, "bob", 2)
    order: list[str] = []
    for _ in range(5):
        fed = batches.feed()
        assert len(fed) <= 2 and queue.count <= 2  # PDA_BATCH_IN_FLIGHT
        assert batches.feed() == []  # full: nothing more until a message is taken
        order += take(queue)
    who = "".join(owner_of(store, j)[0] for j in order)
    assert who == "ababaa", who  # turns, then alice's rest
    assert order == [a[0], b[0], a[1], b[1], a[2], a[3]]
    for job_id in order:  # indexed as queued: the lost-message repair covers them
        assert store.r.zscore(keys.QUEUED, job_id) is not None


def test_a_new_key_goes_before_the_key_fed_longest(store, settings):
    batches = Batches(store, settings)
    queue = batch_queue(settings, store.r)
    _, a = make_batch(store, batches, "zed", 6)
    batches.feed()
    take(queue)
    _, b = make_batch(store, batches, "amy", 1)
    assert batches.feed() == [b[0], a[2]]  # amy was never fed: first


def test_ended_items_and_pending_messages_are_never_fed(store, settings, conn):
    batches = Batches(store, settings)
    queue = batch_queue(settings, store.r)
    bid, jobs = make_batch(store, batches, "o", 5, refused=1)
    store.end(jobs[0], JobStatus.CANCELED)
    assert store.mark_running(jobs[2], "w", 1) and store.finish(jobs[2], {"r": b"1"}, 1)
    fed = batches.feed()
    assert fed == [jobs[3], jobs[4]]  # the canceled, refused and finished ones skipped
    assert batches.get(bid)["fed"] == 5
    # a crash after the enqueue but before `fed` moved: the job is not enqueued twice
    conn.hset(keys.batch(bid), "fed", "3")
    assert batches.feed() == []
    assert take(queue) == [jobs[3], jobs[4]]


def test_the_feeder_runs_alone(store, settings, conn):
    batches = Batches(store, settings)
    make_batch(store, batches, "o", 3)
    lock = conn.lock(keys.BATCHES_FEED_LOCK, timeout=30)
    assert lock.acquire(blocking=False)
    assert batches.feed() == []  # another feeder holds it: it will feed
    lock.release()
    assert len(batches.feed()) == 2


def test_a_batch_ends_once_with_one_event_per_callback(store, settings, conn):
    batches = Batches(store, settings)
    bid, jobs = make_batch(store, batches, "o", 3, refused=2, callback="http://127.0.0.1/h")
    assert not batches.finalize(bid)  # items still queued
    assert batches.public(bid)["status"] == "queued"
    assert store.mark_running(jobs[0], "w", 1)
    assert batches.public(bid)["status"] == "running"
    assert store.finish(jobs[0], {"r": b"1"}, 1)
    store.end(jobs[1], JobStatus.FAILED, error={"status": 500, "title": "x"})
    assert batches.finalize(bid)
    assert not batches.finalize(bid)  # once
    body = batches.public(bid)
    assert body["status"] == "finished" and body["counts"] == {
        "queued": 0, "running": 0, "finished": 1, "failed": 2, "canceled": 0}
    assert body["progress"] == {"done": 10, "total": 20, "fraction": 0.5}
    assert body["items"][1]["error"]["status"] == 500
    assert body["items"][0]["links"]["relevance"].endswith("/relevance")
    (entry,) = body["callbacks"]
    assert entry["type"] == "batch.finished" and entry["status"] == deliveries.PENDING
    delivery = deliveries.Deliveries(conn, settings).get(entry["event_id"])
    assert delivery["subject"] == "batch" and delivery["data"]["status"] == "finished"
    assert delivery["data"]["items"] == body["items"]
    assert conn.zscore(keys.BATCHES_ACTIVE, bid) is None
    assert len(conn.keys(keys.delivery("*"))) == 1


def test_cancel_ends_the_open_items_and_keeps_the_finished(store, settings, conn):
    batches = Batches(store, settings)
    bid, jobs = make_batch(store, batches, "o", 3, callback="http://127.0.0.1/h")
    assert store.mark_running(jobs[0], "w", 1)
    assert store.finish(jobs[0], {"result.json": b"{}"}, 1)
    batches.feed()
    assert batches.cancel(bid)
    assert not batches.cancel(bid)
    body = batches.public(bid)
    assert body["status"] == "canceled" and [i["status"] for i in body["items"]] == [
        "finished", "canceled", "canceled"]
    assert store.file(jobs[0], "result.json") == b"{}"  # the finished one keeps its files
    assert body["callbacks"][0]["type"] == "batch.canceled"
    assert batches.feed() == []


def test_open_items_count_only_the_keys_items_not_ended(store, settings):
    batches = Batches(store, settings)
    _, a = make_batch(store, batches, "o", 3)
    make_batch(store, batches, "other", 4)
    store.end(a[0], JobStatus.CANCELED)
    assert batches.open_items("o") == 2


def test_the_eta_shares_the_workers_round_robin():
    # alone: its work over the workers, never less than its longest item
    assert fair_eta(100, [], 0, 2, 10) == 50
    assert fair_eta(100, [], 0, 4, 60) == 60
    # another key with less work: it finishes first, within our time
    assert fair_eta(100, [30], 0, 1, 10) == 130
    # another key with more: it gets as much as ours meanwhile
    assert fair_eta(100, [500], 20, 1, 10) == 220


def test_the_eta_reads_the_measured_rate(store, settings):
    batches = Batches(store, settings)
    bid, jobs = make_batch(store, batches, "o", 2)
    assert batches.public(bid, workers=1)["eta_seconds"] is None  # no rate yet
    store.record_rates("m", rate=5.0, prep=1.0)
    # two items of 10 passes at 5/s, each with a second of set-up, on one worker
    assert batches.public(bid, workers=1)["eta_seconds"] == 6.0
    assert batches.public(bid, workers=2)["eta_seconds"] == 3.0
    assert batches.public(bid, workers=0)["eta_seconds"] is None
    assert json.loads(store.r.hget(keys.batch(bid), "total_passes")) == 20


def test_the_backlog_gauge_is_a_list_as_long_as_the_items_waiting(store, settings, conn):
    batches = Batches(store, settings)
    bid, _ = make_batch(store, batches, "o", 5)
    make_batch(store, batches, "p", 2)
    batches.tick()  # feeds 2 (PDA_BATCH_IN_FLIGHT)
    assert conn.llen(keys.BATCHES_BACKLOG) == 5 and batches.backlog() == 5
    batches.cancel(bid)  # its message leaves the queue: p's last item takes the room
    batches.tick()
    assert conn.llen(keys.BATCHES_BACKLOG) == batches.backlog() == 0
