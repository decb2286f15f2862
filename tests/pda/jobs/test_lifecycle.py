"""A job's life on a real Redis, without workers: submit (dedup, Idempotency-Key, the two
caps), cancel, requeue and fail, and the decisions of the two repairs, each read back
from the record, the indexes and the RQ queue it leaves."""

from __future__ import annotations

import time

import pytest
from rq.job import JobStatus as RQStatus

from pda import keys
from pda.errors import IdempotencyConflictError, QueueFullError, TooManyQueuedError
from pda.jobs import lifecycle
from pda.jobs.chunks import Chunks, member
from pda.jobs.queue import TASKS, get_queue, rq_job_id
from pda.jobs.record import JobStatus
from pda.jobs.store import now_iso
from pda.params import ExplainParams, plan
from tests.support.service import make_settings

from .conftest import RESULT_TTL


def submission(seed: int = 0, *, caller: str = "c", key: str | None = None,
               image: bytes = b"png bytes") -> lifecycle.Submission:
    params = ExplainParams(window=32, stride=32, samples=2, faithfulness=False, seed=seed)
    return lifecycle.Submission(owner="o", caller=caller, model="m", params=params,
                                image=image, plan=plan(params, (224, 224)),
                                image_meta={"width": 10}, idempotency_key=key)


@pytest.fixture
def queue(settings, conn):
    return get_queue(settings, conn)


def record_ids(conn) -> set[str]:
    """Ids of every job record in Redis (not their image, files or working keys)."""
    names = (k.decode().removeprefix(keys.job("")) for k in conn.keys(keys.job("*")))
    return {n for n in names if ":" not in n}  # job ids have no colon; their keys do


def stale(conn, index: str, name: str) -> None:
    """Age ``name`` in ``index`` (running or queued) far past any stale limit."""
    conn.zadd(index, {name: time.time() - 1000})


# -- submit ---------------------------------------------------------------------------------

def test_submit_stores_the_record_and_enqueues_attempt_one(store, queue, settings, conn):
    sub = submission()
    rec, created = lifecycle.submit(store, queue, settings, sub)
    assert created is True
    stored = store.get(rec.id)
    assert stored == rec
    assert (stored.status, stored.attempt, stored.owner, stored.model) == (
        JobStatus.QUEUED, 1, "o", "m")
    assert stored.planned_passes == stored.progress_total == 99 and stored.progress_done == 0
    assert stored.digest == sub.digest and len(sub.digest) == 64
    assert stored.image == {"width": 10, "bytes": 9}
    assert stored.params["seed"] == 0 and stored.created_at.endswith("Z")
    assert store.image(rec.id) == b"png bytes"
    assert queue.job_ids == [rq_job_id(rec.id, 1)]
    message = queue.fetch_job(rq_job_id(rec.id, 1))
    assert message.func_name == "worker.tasks.run_explanation"
    assert message.args == (rec.id, 1)
    assert store.lookup("digest", "o", sub.digest) == rec.id
    assert conn.zscore(keys.open_jobs("c"), rec.id) is not None


def test_an_identical_request_answers_with_the_job_it_repeats(store, queue, settings):
    first, _ = lifecycle.submit(store, queue, settings, submission())
    again, created = lifecycle.submit(store, queue, settings, submission())
    assert created is False and again.id == first.id
    other, created = lifecycle.submit(store, queue, settings, submission(seed=1))
    assert created is True and other.id != first.id
    assert len(queue.job_ids) == 2


def test_the_digest_covers_image_model_and_parameters():
    base = submission()
    assert submission().digest == base.digest
    assert submission(image=b"other").digest != base.digest
    assert submission(seed=1).digest != base.digest
    assert submission(caller="x", key="k").digest == base.digest  # not who or which key


def test_a_canceled_failed_or_expired_job_is_not_answered_again(store, queue, settings, conn):
    first, _ = lifecycle.submit(store, queue, settings, submission())
    lifecycle.cancel(store, queue, store.get(first.id))
    failed, created = lifecycle.submit(store, queue, settings, submission())
    assert created is True and failed.id != first.id
    lifecycle.fail(store, failed.id, "m", {"detail": "boom"})
    assert store.lookup("digest", "o", submission().digest) == failed.id  # still points
    second, created = lifecycle.submit(store, queue, settings, submission())
    assert created is True and second.id not in (first.id, failed.id)
    # finished, but its results expired: a new job, and the stale pointer is replaced
    assert store.mark_running(second.id, "w", 1)
    assert store.finish(second.id, {"result.json": b"{}"}, 1)
    store.update(second.id, expires_at=now_iso(time.time() - 1))
    third, created = lifecycle.submit(store, queue, settings, submission())
    assert created is True and third.id not in (first.id, failed.id, second.id)
    assert store.lookup("digest", "o", submission().digest) == third.id


def test_an_idempotency_key_replays_its_job_and_refuses_another_request(store, queue,
                                                                        settings):
    first, created = lifecycle.submit(store, queue, settings, submission(key="k1"))
    assert created is True and store.lookup("idem", "o", "k1") == first.id
    replay, created = lifecycle.submit(store, queue, settings, submission(key="k1"))
    assert created is False and replay.id == first.id
    with pytest.raises(IdempotencyConflictError, match="different request"):
        lifecycle.submit(store, queue, settings, submission(seed=1, key="k1"))
    assert len(queue.job_ids) == 1


def test_a_new_key_on_a_repeated_request_is_remembered_for_that_job(store, queue, settings):
    first, _ = lifecycle.submit(store, queue, settings, submission())
    again, created = lifecycle.submit(store, queue, settings, submission(key="k2"))
    assert created is False and again.id == first.id
    assert store.lookup("idem", "o", "k2") == first.id


def test_a_full_queue_refuses_a_new_job_but_still_answers_a_repeat(store, conn):
    settings = make_settings(max_queue_length=1, result_ttl_seconds=RESULT_TTL)
    queue = get_queue(settings, conn)
    first, _ = lifecycle.submit(store, queue, settings, submission())
    with pytest.raises(QueueFullError, match="1 jobs are waiting, the limit is 1"):
        lifecycle.submit(store, queue, settings, submission(seed=1))
    assert lifecycle.submit(store, queue, settings, submission())[0].id == first.id
    assert record_ids(conn) == {first.id} and queue.job_ids == [rq_job_id(first.id, 1)]


def test_the_per_key_cap_refuses_that_caller_only(store, conn):
    settings = make_settings(max_queued_per_key=2, result_ttl_seconds=RESULT_TTL)
    queue = get_queue(settings, conn)
    lifecycle.submit(store, queue, settings, submission(0))
    lifecycle.submit(store, queue, settings, submission(1))
    with pytest.raises(TooManyQueuedError, match="already has 2 jobs waiting"):
        lifecycle.submit(store, queue, settings, submission(2))
    assert lifecycle.submit(store, queue, settings, submission(2, caller="d"))[1] is True
    assert len(queue.job_ids) == 3


def test_a_retry_that_lost_the_idempotency_race_gets_the_winners_job(store, queue, settings):
    winner, _ = lifecycle.submit(store, queue, settings, submission(seed=5))
    create = store.create

    def create_while_the_other_wins(rec, image, live_seconds):
        create(rec, image, live_seconds)
        # a concurrent retry with the same key stores it between this one's look and write
        store.remember("idem", "o", "k", winner.id, 60)

    store.create = create_while_the_other_wins
    rec, created = lifecycle.submit(store, queue, settings, submission(key="k"))
    assert created is False and rec.id == winner.id
    # the loser's own job is canceled, never enqueued
    assert queue.job_ids == [rq_job_id(winner.id, 1)]
    (loser,) = record_ids(store.r) - {winner.id}
    assert store.get(loser).status is JobStatus.CANCELED


# -- cancel, requeue, fail ------------------------------------------------------------------

def test_cancel_of_a_queued_job_counts_it_and_cancels_its_message(store, queue, settings):
    rec, _ = lifecycle.submit(store, queue, settings, submission())
    out = lifecycle.cancel(store, queue, rec)
    assert out.status is JobStatus.CANCELED and out.canceled_at
    assert queue.job_ids == []
    assert queue.fetch_job(rq_job_id(rec.id, 1)).get_status() == RQStatus.CANCELED
    assert store.metrics()[0] == {"canceled|m": 1}
    assert store.lookup("digest", "o", rec.digest) is None
    # twice: nothing changes, nothing is counted again
    assert lifecycle.cancel(store, queue, out).status is JobStatus.CANCELED
    assert store.metrics()[0] == {"canceled|m": 1}


def test_cancel_of_a_running_job_is_left_to_its_worker_to_count(store, queue, new_job):
    job_id = new_job(JobStatus.RUNNING)
    out = lifecycle.cancel(store, queue, store.get(job_id))
    assert out.status is JobStatus.CANCELED
    assert store.metrics()[0] == {}


def test_requeue_enqueues_the_next_attempt_once(store, settings, new_job, queue):
    job_id = new_job(JobStatus.RUNNING)
    other = new_job(JobStatus.RUNNING)
    assert lifecycle.requeue(store, settings, other, 1, 99) is True
    assert lifecycle.requeue(store, settings, job_id, 1, 99, at_front=True,
                             reason="shutdown") is True
    assert queue.job_ids == [rq_job_id(job_id, 2), rq_job_id(other, 2)]  # at the front
    rec = store.get(job_id)
    assert (rec.status, rec.attempt, rec.previous_attempt["ended"]) == (
        JobStatus.QUEUED, 2, "shutdown")
    assert queue.fetch_job(rq_job_id(job_id, 2)).args == (job_id, 2)
    assert lifecycle.requeue(store, settings, job_id, 1, 99) is False  # attempt 1 is gone
    assert len(queue.job_ids) == 2


def test_an_ended_job_is_not_requeued_and_nothing_is_enqueued(store, settings, new_job, queue):
    for status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED):
        job_id = new_job(status)
        assert lifecycle.requeue(store, settings, job_id, 1, 99) is False
        assert store.get(job_id).status is status
    assert queue.job_ids == []


def test_fail_ends_an_active_job_and_counts_it_but_not_an_ended_one(store, new_job):
    running = new_job(JobStatus.RUNNING)
    lifecycle.fail(store, running, "m", {"detail": "boom"})
    assert store.get(running).status is JobStatus.FAILED
    assert store.get(running).error == {"detail": "boom"}
    canceled = new_job(JobStatus.CANCELED)
    lifecycle.fail(store, store.get(canceled), "m", {"detail": "late"})
    assert store.get(canceled).status is JobStatus.CANCELED
    assert store.get(canceled).error is None
    assert store.metrics()[0] == {"failed|m": 1}


# -- reaping abandoned attempts -------------------------------------------------------------

def test_a_stale_job_with_fresh_progress_lost_its_worker_and_is_requeued(store, settings,
                                                                         new_job, queue, conn):
    job_id, fresh = new_job(JobStatus.RUNNING), new_job(JobStatus.RUNNING)
    stale(conn, keys.RUNNING, job_id)  # its beat stopped; its progress is recent
    assert lifecycle.reap_abandoned(settings, store) == [job_id]
    rec = store.get(job_id)
    assert (rec.status, rec.attempt, rec.previous_attempt["ended"]) == (
        JobStatus.QUEUED, 2, "worker_lost")
    assert queue.job_ids == [rq_job_id(job_id, 2)]
    assert store.get(fresh).status is JobStatus.RUNNING  # its beat is recent: left alone
    assert lifecycle.reap_abandoned(settings, store) == []


def test_a_stale_job_whose_progress_is_old_stalled(store, settings, new_job, conn):
    job_id = new_job(JobStatus.RUNNING, heartbeat_at=time.time() - settings.stall_seconds - 1)
    stale(conn, keys.RUNNING, job_id)
    assert lifecycle.reap_abandoned(settings, store) == [job_id]
    assert store.get(job_id).previous_attempt["ended"] == "stalled"


def test_a_job_abandoned_once_too_often_fails(store, settings, new_job, conn, queue):
    last = settings.job_retries + 1
    job_id = new_job(JobStatus.RUNNING, attempt=last)
    stale(conn, keys.RUNNING, job_id)
    assert lifecycle.reap_abandoned(settings, store) == [job_id]
    rec = store.get(job_id)
    assert rec.status is JobStatus.FAILED
    assert rec.error["detail"] == f"the worker running this job stopped {last} times; giving up"
    assert rec.error["status"] == 500 and queue.job_ids == []
    assert store.metrics()[0] == {"failed|m": 1}


def test_a_stale_entry_of_an_ended_job_is_dropped_and_nothing_else(store, settings, new_job,
                                                                 conn):
    job_id = new_job(JobStatus.CANCELED)
    stale(conn, keys.RUNNING, job_id)
    assert lifecycle.reap_abandoned(settings, store) == []
    assert conn.zscore(keys.RUNNING, job_id) is None
    assert store.get(job_id).status is JobStatus.CANCELED


def split_job(store, settings, new_job, n: int = 2) -> tuple[str, Chunks]:
    """A running job split into ``n`` chunks of 64 windows, chunk 0 claimed by w:1."""
    job_id = new_job(JobStatus.RUNNING)
    chunks = Chunks(store, settings)
    assert chunks.start(job_id, 1, [(64 * i, 64 * i + 64) for i in range(n)], 2, {})
    assert chunks.claim(job_id, 0, 1, "w:1")
    return job_id, chunks


def test_a_stale_chunk_is_rerun_alone(store, settings, new_job, conn):
    job_id, chunks = split_job(store, settings, new_job)
    stale(conn, keys.RUNNING, member(job_id, 0))
    assert lifecycle.reap_abandoned(settings, store) == [member(job_id, 0)]
    states = chunks.states(job_id)
    assert (states[0]["status"], states[0]["attempt"]) == ("queued", 2)
    assert states[1]["attempt"] == 1
    assert store.get(job_id).attempt == 1 and store.get(job_id).status is JobStatus.RUNNING
    assert rq_job_id(job_id, 2) not in get_queue(settings, conn).job_ids
    assert chunks.queue.job_ids[0] == f"{job_id}-c0-a2"


def test_a_chunk_abandoned_once_too_often_fails_the_job(store, settings, new_job, conn):
    job_id, chunks = split_job(store, settings, new_job)
    for attempt in range(1, settings.job_retries + 1):
        assert chunks.requeue(job_id, 0, attempt)
        assert chunks.claim(job_id, 0, attempt + 1, "w:1")
    stale(conn, keys.RUNNING, member(job_id, 0))
    lifecycle.reap_abandoned(settings, store)
    rec = store.get(job_id)
    assert rec.status is JobStatus.FAILED
    assert rec.error["detail"] == (f"the workers running chunk 0 of this job stopped "
                                   f"{settings.job_retries + 1} times; giving up")


def test_a_stale_merge_is_enqueued_again_until_its_cap(store, settings, new_job, conn):
    job_id, chunks = split_job(store, settings, new_job, n=1)
    assert chunks.finish(job_id, 0, 1, b"partial") == "merge"
    assert chunks.claim_merge(job_id) == 1
    stale(conn, keys.RUNNING, member(job_id, "merge"))
    chunk_messages = set(chunks.queue.job_ids)
    assert lifecycle.reap_abandoned(settings, store) == [member(job_id, "merge")]
    assert conn.zscore(keys.RUNNING, member(job_id, "merge")) > time.time() - 5
    merges = [chunks.queue.fetch_job(i) for i in chunks.queue.job_ids
              if i not in chunk_messages]
    assert [(m.func_name, m.args) for m in merges] == [(TASKS["merge"], (job_id,))]
    store.update(job_id, merge_attempts=settings.job_retries + 1)
    stale(conn, keys.RUNNING, member(job_id, "merge"))
    lifecycle.reap_abandoned(settings, store)
    assert store.get(job_id).status is JobStatus.FAILED
    assert store.get(job_id).error["detail"] == (
        f"the workers merging this job's chunks stopped {settings.job_retries + 1} times; "
        "giving up")
    assert len(chunks.queue.job_ids) == len(chunk_messages) + 1  # no merge enqueued again


# -- repairing lost queue messages ----------------------------------------------------------

def lose_message(queue, rq_id: str) -> None:
    message = queue.fetch_job(rq_id)
    queue.remove(message)
    message.delete()


def test_a_job_waiting_in_the_queue_is_left_alone(store, queue, settings, conn):
    rec, _ = lifecycle.submit(store, queue, settings, submission())
    stale(conn, keys.QUEUED, rec.id)
    assert lifecycle.requeue_lost(settings, store) == []
    assert store.get(rec.id).attempt == 1 and queue.job_ids == [rq_job_id(rec.id, 1)]


def test_a_lost_message_is_replaced_by_the_next_attempt_once(store, queue, settings, conn):
    rec, _ = lifecycle.submit(store, queue, settings, submission())
    lose_message(queue, rq_job_id(rec.id, 1))
    assert lifecycle.requeue_lost(settings, store) == []  # queued just now: not yet a candidate
    stale(conn, keys.QUEUED, rec.id)
    assert lifecycle.requeue_lost(settings, store) == [rec.id]
    after = store.get(rec.id)
    assert (after.status, after.attempt, after.previous_attempt["ended"]) == (
        JobStatus.QUEUED, 2, "message_lost")
    assert queue.job_ids == [rq_job_id(rec.id, 2)]
    stale(conn, keys.QUEUED, rec.id)
    assert lifecycle.requeue_lost(settings, store) == []  # its new message is pending


def test_a_message_a_dead_worker_took_counts_as_lost(store, queue, settings, conn):
    rec, _ = lifecycle.submit(store, queue, settings, submission())
    queue.fetch_job(rq_job_id(rec.id, 1)).set_status(RQStatus.FAILED)
    stale(conn, keys.QUEUED, rec.id)
    assert lifecycle.requeue_lost(settings, store) == [rec.id]
    assert store.get(rec.id).attempt == 2


def test_the_repair_of_one_attempt_is_claimed_by_one_caller(store, queue, settings, conn):
    rec, _ = lifecycle.submit(store, queue, settings, submission())
    lose_message(queue, rq_job_id(rec.id, 1))
    stale(conn, keys.QUEUED, rec.id)
    assert store.claim_repair(rec.id, 1)  # another worker is repairing it
    assert lifecycle.requeue_lost(settings, store) == []
    assert store.get(rec.id).attempt == 1 and queue.job_ids == []


def test_an_ended_job_leaves_the_queued_index(store, settings, new_job, conn):
    job_id = new_job(JobStatus.CANCELED)
    stale(conn, keys.QUEUED, job_id)
    assert lifecycle.requeue_lost(settings, store) == []
    assert conn.zscore(keys.QUEUED, job_id) is None


def test_a_chunk_whose_message_was_lost_is_requeued(store, settings, new_job, conn):
    job_id, chunks = split_job(store, settings, new_job)
    assert conn.zscore(keys.QUEUED, member(job_id, 1)) is not None
    stale(conn, keys.QUEUED, member(job_id, 1))
    assert lifecycle.requeue_lost(settings, store) == []  # its message still waits
    lose_message(chunks.queue, f"{job_id}-c1-a1")
    assert lifecycle.requeue_lost(settings, store) == [member(job_id, 1)]
    assert chunks.states(job_id)[1]["attempt"] == 2
    assert chunks.queue.job_ids == [f"{job_id}-c1-a2", f"{job_id}-c0-a1"]  # at the front
    # a chunk that is running is no candidate: its entry leaves the queued index
    stale(conn, keys.QUEUED, member(job_id, 0))
    assert lifecycle.requeue_lost(settings, store) == []
    assert conn.zscore(keys.QUEUED, member(job_id, 0)) is None
