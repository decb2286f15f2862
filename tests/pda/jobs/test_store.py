"""The job store on a real Redis: the keys each write leaves, and the compare-and-set
transitions that refuse a second claim, a finish after a cancel, a requeue of an ended job
and a write to a record Redis has lost."""

from __future__ import annotations

import json
import time

import pytest
import redis

from pda import keys
from pda.jobs.record import JobRecord, JobStatus
from pda.jobs.store import (
    SWEEP_BUCKETS,
    TOMBSTONE_SECONDS,
    checkpoint_key,
    chunk_keys,
    is_full,
    is_transient,
    new_job_id,
    now_iso,
)

from .conftest import RESULT_TTL


def raw_record(conn: redis.Redis, job_id: str) -> dict[str, object]:
    return {k.decode(): json.loads(v) for k, v in conn.hgetall(keys.job(job_id)).items()}


def working_keys(conn: redis.Redis, job_id: str) -> None:
    """A split job's and a checkpointing job's keys, as the workers leave them."""
    for key in chunk_keys(job_id):
        conn.hset(key, "0", b"x")


# -- helpers ----------------------------------------------------------------------------

def test_times_are_utc_iso_with_milliseconds_and_ids_are_random_and_url_safe():
    assert now_iso(0) == "1970-01-01T00:00:00.000Z"
    assert now_iso(1.2345) == "1970-01-01T00:00:01.234Z"
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


def test_a_full_redis_and_a_lost_connection_are_transient_other_errors_are_not():
    full = redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'")
    assert is_full(full) and is_transient(full)
    assert is_full(redis.exceptions.OutOfMemoryError("x"))
    assert is_transient(redis.exceptions.ConnectionError("x"))
    assert is_transient(redis.exceptions.TimeoutError("x"))
    assert not is_full(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not is_transient(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not is_transient(ValueError("x"))


def test_a_jobs_working_keys_are_its_chunks_progress_partials_and_checkpoints():
    assert chunk_keys("j") == ("pda:job:j:chunks", "pda:job:j:progress", "pda:job:j:partials",
                               "pda:job:j:checkpoint")
    assert checkpoint_key("j") == "pda:job:j:checkpoint"


# -- records ------------------------------------------------------------------------------

def test_create_stores_record_image_and_queued_index_for_the_jobs_life(store, conn):
    rec = JobRecord(id="j1", status=JobStatus.QUEUED, owner="o", model="m", planned_passes=9)
    before = time.time()
    store.create(rec, b"png", live_seconds=600)
    assert raw_record(conn, "j1") == {"id": "j1", "status": "queued", "owner": "o",
                                      "model": "m", "planned_passes": 9, "version": 1}
    assert 600 + TOMBSTONE_SECONDS - 2 <= conn.ttl(keys.job("j1")) <= 600 + TOMBSTONE_SECONDS
    assert conn.get(keys.image("j1")) == b"png" and 598 <= conn.ttl(keys.image("j1")) <= 600
    assert before <= conn.zscore(keys.QUEUED, "j1") <= time.time()
    assert store.get("j1") == rec and store.image("j1") == b"png"
    assert store.get("unknown") is None and store.image("unknown") is None


def test_a_dict_record_is_validated_like_a_typed_one(store):
    store.create({"id": "j2", "status": "queued", "owner": "o"}, b"", 60)
    assert store.get("j2").status is JobStatus.QUEUED


def test_update_and_fields_read_back_and_a_lost_record_is_never_recreated(store, conn,
                                                                          new_job):
    job_id = new_job()
    assert store.update(job_id, worker="w:9", prediction=[{"label": "cat"}]) is True
    assert store.fields(job_id, "worker", "prediction", "nothing_here") == [
        "w:9", [{"label": "cat"}], None]
    assert store.field(job_id, "attempt") == 1
    lost = new_job_id()
    assert store.update(lost, worker="w") is False
    assert store.set_progress(lost, 5, 10) is False
    assert store.set_progress_done(lost, 5) is False
    assert conn.exists(keys.job(lost)) == 0


# -- claiming an attempt --------------------------------------------------------------

def test_mark_running_claims_the_attempt_once(store, conn, new_job):
    job_id = new_job()
    assert store.mark_running(job_id, "w:1", 1) is True
    rec = store.get(job_id)
    assert (rec.status, rec.worker, rec.attempt) == (JobStatus.RUNNING, "w:1", 1)
    assert rec.started_at and abs(rec.heartbeat_at - time.time()) < 5
    assert conn.zscore(keys.RUNNING, job_id) is not None
    assert conn.zscore(keys.QUEUED, job_id) is None
    # a second message for the same attempt (a duplicate, a retry) does not start it again
    assert store.mark_running(job_id, "w:2", 1) is False
    assert store.get(job_id).worker == "w:1"


def test_mark_running_refuses_another_attempt_and_an_ended_job(store, new_job):
    queued = new_job(attempt=2)
    assert store.mark_running(queued, "w", 1) is False  # a late message of attempt 1
    assert store.get(queued).status is JobStatus.QUEUED
    canceled = new_job(JobStatus.CANCELED)
    assert store.mark_running(canceled, "w", 1) is False
    assert store.get(canceled).status is JobStatus.CANCELED


# -- requeue ------------------------------------------------------------------------------

def test_requeued_gives_the_attempt_back_as_the_next_one(store, conn, new_job):
    job_id = new_job(JobStatus.RUNNING)
    assert store.requeued(job_id, 2, "shutdown") is True
    rec = store.get(job_id)
    assert (rec.status, rec.attempt, rec.worker, rec.started_at) == (
        JobStatus.QUEUED, 2, None, None)
    assert rec.previous_attempt["attempt"] == 1 and rec.previous_attempt["ended"] == "shutdown"
    assert rec.previous_attempt["at"].endswith("Z")
    assert conn.zscore(keys.RUNNING, job_id) is None
    assert conn.zscore(keys.QUEUED, job_id) is not None
    # twice for the same attempt: the second finds attempt 2, not 1, and changes nothing
    assert store.requeued(job_id, 2, "crashed") is False
    assert store.get(job_id).previous_attempt["ended"] == "shutdown"


@pytest.mark.parametrize("status", [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED])
def test_an_ended_job_is_never_requeued(store, conn, new_job, status):
    job_id = new_job(status)
    before = raw_record(conn, job_id)
    assert store.requeued(job_id, 2) is False
    assert raw_record(conn, job_id) == before
    assert conn.zscore(keys.QUEUED, job_id) is None


# -- finish and end -----------------------------------------------------------------------

def test_finish_stores_the_files_and_drops_the_image_and_working_keys(store, conn, new_job):
    job_id = new_job(JobStatus.RUNNING)
    working_keys(conn, job_id)
    files = {"result.json": b"{}", "relevance.npy": b"\x93NUMPY"}
    assert store.finish(job_id, files, 1, seconds=2.5, forward_passes=99) is True
    rec = store.get(job_id)
    assert rec.status is JobStatus.FINISHED
    assert rec.files == ["relevance.npy", "result.json"]  # sorted names
    assert (rec.seconds, rec.forward_passes) == (2.5, 99)
    assert rec.finished_at and rec.expires_at > rec.finished_at
    assert conn.hgetall(keys.files(job_id)) == {k.encode(): v for k, v in files.items()}
    assert RESULT_TTL - 2 <= conn.ttl(keys.files(job_id)) <= RESULT_TTL
    assert conn.ttl(keys.job(job_id)) > RESULT_TTL + TOMBSTONE_SECONDS - 5
    assert store.file(job_id, "result.json") == b"{}"
    assert conn.exists(keys.image(job_id), *chunk_keys(job_id)) == 0
    assert conn.zscore(keys.RUNNING, job_id) is None


def test_a_finish_after_a_cancel_stores_nothing(store, conn, new_job):
    job_id = new_job(JobStatus.RUNNING)
    assert store.end(job_id, JobStatus.CANCELED, canceled_at=now_iso()) is True
    assert store.finish(job_id, {"result.json": b"{}"}, 1) is False
    assert store.get(job_id).status is JobStatus.CANCELED
    assert conn.exists(keys.files(job_id)) == 0


def test_a_finish_by_a_taken_over_attempt_stores_nothing(store, conn, new_job):
    job_id = new_job(JobStatus.RUNNING)
    assert store.requeued(job_id, 2, "worker_lost")
    assert store.mark_running(job_id, "w:2", 2)
    assert store.finish(job_id, {"result.json": b"old"}, 1) is False  # the dead one's
    assert store.get(job_id).status is JobStatus.RUNNING
    assert conn.exists(keys.files(job_id)) == 0
    assert store.finish(job_id, {"result.json": b"new"}, 2) is True
    assert store.file(job_id, "result.json") == b"new"


def test_end_keeps_a_tombstone_and_drops_image_files_working_keys_and_indexes(store, conn,
                                                                            new_job):
    job_id = new_job(JobStatus.RUNNING)
    working_keys(conn, job_id)
    conn.hset(keys.files(job_id), "x", b"1")
    assert store.end(job_id, JobStatus.FAILED, error={"detail": "boom"}) is True
    rec = store.get(job_id)
    assert rec.status is JobStatus.FAILED and rec.error == {"detail": "boom"}
    assert rec.finished_at and rec.expires_at
    assert RESULT_TTL + TOMBSTONE_SECONDS - 5 < conn.ttl(keys.job(job_id))
    assert conn.exists(keys.image(job_id), keys.files(job_id), *chunk_keys(job_id)) == 0
    assert conn.zscore(keys.RUNNING, job_id) is None and conn.zscore(keys.QUEUED, job_id) is None


def test_end_only_from_leaves_a_job_in_another_status_as_it_is(store, new_job):
    job_id = new_job(JobStatus.CANCELED)
    assert store.end(job_id, JobStatus.FAILED, only_from=(JobStatus.QUEUED, JobStatus.RUNNING),
                     error={"detail": "late"}) is False
    rec = store.get(job_id)
    assert rec.status is JobStatus.CANCELED and rec.error is None


def test_end_of_a_lost_record_writes_no_tombstone_but_clears_the_rest(store, conn):
    job_id = new_job_id()
    conn.set(keys.image(job_id), b"png")
    conn.zadd(keys.RUNNING, {job_id: time.time()})
    assert store.end(job_id, JobStatus.CANCELED) is False
    assert conn.exists(keys.job(job_id), keys.image(job_id)) == 0
    assert conn.zscore(keys.RUNNING, job_id) is None


# -- progress and heartbeats ------------------------------------------------------------------

def test_progress_writes_the_counts_the_rate_and_a_heartbeat(store, conn, new_job):
    job_id = new_job(JobStatus.RUNNING)
    conn.zadd(keys.RUNNING, {job_id: 1.0})  # an old beat
    assert store.set_progress(job_id, 40, 99, rate=12.5) is True
    rec = store.get(job_id)
    assert (rec.progress_done, rec.progress_total, rec.progress_rate) == (40, 99, 12.5)
    assert conn.zscore(keys.RUNNING, job_id) > time.time() - 5
    assert store.set_progress(job_id, 41, 99) is True  # no rate measured: the last one stays
    assert store.get(job_id).progress_rate == 12.5
    assert store.set_progress_done(job_id, 77) is True
    assert store.get(job_id).progress_done == 77


def test_progress_and_beats_never_add_a_job_to_the_running_index(store, conn, new_job):
    job_id = new_job()  # queued: not in the running index
    assert store.set_progress(job_id, 1, 99) is True
    store.beat(job_id)
    assert conn.zscore(keys.RUNNING, job_id) is None
    running = new_job(JobStatus.RUNNING)
    conn.zadd(keys.RUNNING, {running: 1.0})
    store.beat(running)
    assert conn.zscore(keys.RUNNING, running) > time.time() - 5


def test_progress_never_goes_back_and_tells_the_attempt_where_the_job_is(store, new_job):
    job_id = new_job(JobStatus.RUNNING)
    assert store.report(job_id, {"progress_done": 120, "progress_total": 200,
                                 "phase": "sweeping"}) == ("running", 1)
    # a rerun that resumes behind its predecessor's last report keeps the shown count
    store.set_progress(job_id, 97, 200, phase="preparing")
    rec = store.get(job_id)
    assert (rec.progress_done, rec.phase) == (120, "preparing")
    store.set_progress(job_id, 150, 200)
    assert store.get(job_id).progress_done == 150
    # an ended job's record is left as it is; the attempt learns it ended
    store.end(job_id, JobStatus.CANCELED)
    assert store.report(job_id, {"progress_done": 199}) == ("canceled", 1)
    assert store.get(job_id).progress_done == 150
    assert store.report("no-such-job", {"progress_done": 1}) is None


# -- the indexes the reaper and the lost-message repair read ----------------------------------

def test_claim_stale_returns_each_stale_job_to_one_caller(store, conn):
    now = time.time()
    conn.zadd(keys.RUNNING, {"old": now - 100, "fresh": now})
    assert store.claim_stale(30) == ["old"]
    assert store.claim_stale(30) == []  # taken by the first caller
    assert conn.zrange(keys.RUNNING, 0, -1) == [b"fresh"]
    assert store.running_count() == 1


def test_queued_since_lists_jobs_queued_longer_than_asked(store, conn):
    now = time.time()
    conn.zadd(keys.QUEUED, {"a": now - 100, "b": now - 10, "c": now})
    assert store.queued_since(50) == ["a"]
    assert store.queued_since(5) == ["a", "b"]
    store.unindex("a")
    assert store.queued_since(5) == ["b"]


def test_claim_repair_answers_true_once_per_job_and_attempt(store, conn):
    assert store.claim_repair("j", 1) is True
    assert store.claim_repair("j", 1) is False
    assert store.claim_repair("j", 2) is True
    assert 3590 <= conn.ttl(keys.repair("j", 1)) <= 3600


# -- the per-caller queued cap ------------------------------------------------------------

def test_reserve_counts_queued_jobs_up_to_the_cap(store, conn, new_job):
    a, b = new_job(), new_job()
    assert store.reserve("caller", a, cap=3) == 0
    assert store.reserve("caller", b, cap=3) == 1
    assert store.reserve("caller", "c", cap=3) == 2  # no record yet: counts in its grace
    assert store.reserve("caller", "d", cap=3) is None  # at the cap: nothing reserved
    members = {m.decode() for m in conn.zrange(keys.open_jobs("caller"), 0, -1)}
    assert members == {a, b, "c"}
    assert store.reserve("someone else", "e", cap=3) == 0  # each caller has its own


def test_ended_jobs_leave_the_count_and_running_ones_do_not_count(store, conn, new_job):
    queued, running, canceled = new_job(), new_job(JobStatus.RUNNING), new_job()
    for job_id in (queued, running, canceled):
        assert store.reserve("k", job_id, cap=3) is not None
    assert store.end(canceled, JobStatus.CANCELED)
    # queued counts; running neither counts nor leaves the index (it may be requeued)
    assert store.reserve("k", "next", cap=2) == 1
    members = {m.decode() for m in conn.zrange(keys.open_jobs("k"), 0, -1)}
    assert members == {queued, running, "next"}
    assert store.requeued(running, 2)  # back to queued: it counts again
    assert store.reserve("k", "one more", cap=3) is None


def test_a_reservation_whose_record_never_came_stops_counting_after_its_grace(store, conn):
    conn.zadd(keys.open_jobs("k"), {"never written": time.time() - 120})
    assert store.reserve("k", "new", cap=1, grace=60) == 0
    assert conn.zrange(keys.open_jobs("k"), 0, -1) == [b"new"]


# -- dedup and idempotency keys -------------------------------------------------------------

def test_remember_sets_a_pointer_once_and_forget_drops_it(store, conn):
    assert store.lookup("digest", "o", "sha") is None
    assert store.remember("digest", "o", "sha", "j1", ttl=60) is True
    assert store.remember("digest", "o", "sha", "j2", ttl=60) is False  # the first stays
    assert store.lookup("digest", "o", "sha") == "j1"
    assert store.lookup("digest", "other owner", "sha") is None
    assert 58 <= conn.ttl(keys.dedup("digest", "o", "sha")) <= 60
    store.forget("digest", "o", "sha")
    assert store.lookup("digest", "o", "sha") is None


# -- metrics ------------------------------------------------------------------------------

def test_count_adds_outcomes_passes_and_the_finished_duration_histogram(store):
    store.count(JobStatus.FINISHED, "m", passes=100, seconds=4.0)
    store.count(JobStatus.FAILED, "m", passes=10, seconds=1.0)
    store.count(JobStatus.CANCELED, "other")
    jobs, sweep = store.metrics()
    assert jobs == {"finished|m": 1, "failed|m": 1, "canceled|other": 1}
    buckets = {f"le_{b}": 1.0 for b in SWEEP_BUCKETS if b >= 5}  # 4 s: from le_5 up
    assert sweep == {"passes": 110.0, "passes_seconds": 5.0, "sum": 4.0, "count": 1.0,
                     "last_rate": 25.0, **buckets}
