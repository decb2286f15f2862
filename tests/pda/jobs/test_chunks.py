"""Split jobs' bookkeeping on a real Redis, without workers: the window ranges, the chunk
table and its compare-and-set moves (a chunk claimed once, a partial stored only by the
attempt that holds it, the next chunk released as one ends, one merge at the end)."""

from __future__ import annotations

import time

import pytest

from pda import keys
from pda.grid import BLOCK_WINDOWS, blocks_within
from pda.jobs.attempts import ENDED, TAKEN, ChunkHold
from pda.jobs.chunks import (
    MERGE,
    Chunks,
    chunk_queue,
    member,
    parse_member,
    rq_chunk_id,
    split,
)
from pda.jobs.queue import TASKS
from pda.jobs.record import JobStatus
from tests.support.service import make_settings

from .conftest import RESULT_TTL

#: three chunks of one block each, two passes per window
RANGES = [(0, 64), (64, 128), (128, 150)]


@pytest.fixture
def chunks(store, conn) -> Chunks:
    """Two chunks in flight per job (the third waits for one of them to end)."""
    return Chunks(store, make_settings(chunks_in_flight=2, result_ttl_seconds=RESULT_TTL))


@pytest.fixture
def job(new_job, chunks) -> str:
    """A running job (attempt 1) split into the three chunks of RANGES."""
    job_id = new_job(JobStatus.RUNNING)
    assert chunks.start(job_id, 1, RANGES, 2, {"labels": ["cat"], "targets": [{"t": 1}]})
    return job_id


def queued_ids(chunks: Chunks) -> list[str]:
    return chunks.queue.job_ids


# -- names and ranges -----------------------------------------------------------------------

def test_index_members_name_the_job_and_the_part():
    assert member("j", 3) == "j#3" and member("j", MERGE) == "j#merge"
    assert parse_member("j#3") == ("j", "3")
    assert parse_member("j#merge") == ("j", "merge")
    assert parse_member("j") == ("j", None)
    assert rq_chunk_id("j", 2, 5) == "j-c2-a5"


def test_chunks_hold_whole_blocks_of_windows():
    assert BLOCK_WINDOWS == 64
    # the one cut into whole blocks (pda.grid), shared with the checkpoint segments
    assert blocks_within(1000, 3) * BLOCK_WINDOWS == 320  # 5 blocks of 64 x 3 passes fit
    assert blocks_within(1, 3) * BLOCK_WINDOWS == 64  # at least one block


def test_a_job_is_split_only_when_it_exceeds_the_chunk_size():
    assert split(100, 0, 3) == [(0, 100)]  # 0: never split
    assert split(100, 300, 3) == [(0, 100)]  # fits one chunk
    assert split(200, 3 * 64, 3) == [(0, 64), (64, 128), (128, 192), (192, 200)]
    ranges = split(29 * 29, 3 * 64 * 3, 3)
    assert ranges[0] == (0, 192) and ranges[-1] == (768, 841) and len(ranges) == 5


# -- start ----------------------------------------------------------------------------------

def test_start_writes_the_table_and_enqueues_the_chunks_in_flight(store, conn, chunks, job):
    assert chunks.states(job) == {
        0: {"status": "queued", "attempt": 1, "range": [0, 64], "passes": 128},
        1: {"status": "queued", "attempt": 1, "range": [64, 128], "passes": 128},
        2: {"status": "pending", "attempt": 1, "range": [128, 150], "passes": 44}}
    rec = store.get(job)
    assert (rec.chunks_total, rec.chunks_done, rec.labels) == (3, 0, ["cat"])
    assert rec.targets == [{"t": 1}]
    assert conn.zscore(keys.RUNNING, job) is None  # the chunks beat from now on
    assert {m.decode() for m in conn.zrange(keys.QUEUED, 0, -1)} == {f"{job}#0", f"{job}#1"}
    assert queued_ids(chunks) == [rq_chunk_id(job, 0, 1), rq_chunk_id(job, 1, 1)]
    message = chunks.queue.fetch_job(rq_chunk_id(job, 0, 1))
    assert message.func_name == TASKS["chunk"] and message.args == (job, 0, 1)
    assert chunks.queue.name == chunk_queue(chunks.settings, conn).name
    assert chunks.queue.name.endswith("-chunks")
    assert 2 * RESULT_TTL - 5 < conn.ttl(keys.chunks(job)) <= 2 * RESULT_TTL


def test_start_by_a_taken_over_attempt_or_for_an_ended_job_writes_nothing(
        store, conn, chunks, new_job):
    running = new_job(JobStatus.RUNNING, attempt=2)
    canceled = new_job(JobStatus.CANCELED)
    assert chunks.start(running, 1, RANGES, 2, {}) is False  # attempt 1 was rerun
    assert chunks.start(canceled, 1, RANGES, 2, {}) is False
    assert chunks.states(running) == chunks.states(canceled) == {}
    assert store.get(running).chunks_total is None
    assert queued_ids(chunks) == []


# -- claim and beat --------------------------------------------------------------------------

def test_a_chunk_is_claimed_once_by_its_attempt(conn, chunks, job):
    entry = chunks.claim(job, 0, 1, "w:1")
    assert (entry["status"], entry["worker"], entry["attempt"]) == ("running", "w:1", 1)
    assert chunks.states(job)[0] == entry
    assert conn.zscore(keys.QUEUED, f"{job}#0") is None
    assert conn.zscore(keys.RUNNING, f"{job}#0") is not None
    assert conn.hget(keys.chunk_progress(job), "0") == b"0"
    assert chunks.claim(job, 0, 1, "w:2") is None  # a second message for it
    assert chunks.claim(job, 1, 2, "w:2") is None  # not its attempt
    assert chunks.claim(job, 2, 1, "w:2") is None  # pending: not released yet
    assert chunks.states(job)[0]["worker"] == "w:1"


def test_a_chunk_of_an_ended_job_is_not_claimed(store, chunks, job):
    store.end(job, JobStatus.CANCELED)
    assert chunks.claim(job, 0, 1, "w:1") is None


def test_beats_add_up_the_chunks_progress_into_the_jobs(store, conn, chunks, job):
    chunks.claim(job, 0, 1, "w:1")
    chunks.claim(job, 1, 1, "w:2")
    conn.zadd(keys.RUNNING, {f"{job}#0": 1.0})
    assert chunks.beat(job, 0, 30) is True
    assert chunks.beat(job, 1, 12) is True
    assert chunks.progress(job) == 42
    assert store.get(job).progress_done == 1 + 42  # and the planning run's one pass
    assert conn.zscore(keys.RUNNING, f"{job}#0") > time.time() - 5
    store.r.delete(keys.job(job))
    assert chunks.beat(job, 0, 31) is False  # the record is gone


def test_a_chunks_progress_write_reads_its_own_entry_and_knows_when_it_lost_it(
        store, conn, chunks, job):
    assert chunks.state(job, 2) == chunks.states(job)[2] == {
        "status": "pending", "attempt": 1, "range": [128, 150], "passes": 44}
    assert chunks.state(job, 7) is None
    chunks.claim(job, 0, 1, "w:1")
    hold = ChunkHold(store, chunks.settings, store.get(job), 0, 1)
    assert hold.write({"phase": "sweeping", "phase_done": 20}) is None
    assert chunks.progress(job) == 20
    assert chunks.requeue(job, 0, 1)  # rerun elsewhere as attempt 2
    assert hold.write({"phase": "sweeping", "phase_done": 30}) == TAKEN
    assert chunks.progress(job) == 0  # the rerun starts from 0; the old attempt wrote no 30
    assert ChunkHold(store, chunks.settings, store.get(job), 1, 1).write(
        {"phase": "preparing"}) is None  # chunk 1: still queued at attempt 1
    store.end(job, JobStatus.CANCELED)
    assert hold.write({"phase": "sweeping", "phase_done": 40}) == ENDED


# -- finish ---------------------------------------------------------------------------------

def test_finishing_chunks_releases_the_next_then_asks_for_one_merge(store, conn, chunks, job):
    chunks.claim(job, 0, 1, "w:1")
    chunks.claim(job, 1, 1, "w:2")
    assert chunks.finish(job, 0, 1, b"p0") == "next"
    states = chunks.states(job)
    assert (states[0]["status"], states[2]["status"]) == ("done", "queued")
    assert conn.zscore(keys.QUEUED, f"{job}#2") is not None
    assert conn.zscore(keys.RUNNING, f"{job}#0") is None
    assert queued_ids(chunks)[-1] == rq_chunk_id(job, 2, 1)
    assert store.get(job).chunks_done == 1
    assert chunks.finish(job, 1, 1, b"p1") == "done"  # nothing left to release
    chunks.claim(job, 2, 1, "w:1")
    assert chunks.finish(job, 2, 1, b"p2") == MERGE
    assert chunks.partials(job) == {0: b"p0", 1: b"p1", 2: b"p2"}
    assert store.get(job).chunks_done == 3
    assert conn.zscore(keys.RUNNING, f"{job}#merge") is not None


def test_a_chunk_finished_by_a_stale_attempt_is_not_stored(store, chunks, job):
    chunks.claim(job, 0, 1, "w:dead")
    assert chunks.requeue(job, 0, 1)  # the reaper gave it to attempt 2
    assert chunks.finish(job, 0, 1, b"stale") is None
    chunks.claim(job, 0, 2, "w:new")
    assert chunks.finish(job, 0, 1, b"stale") is None  # attempt 2 holds it now
    assert chunks.partials(job) == {}
    assert chunks.finish(job, 0, 2, b"fresh") == "next"
    assert chunks.partials(job) == {0: b"fresh"}
    assert chunks.finish(job, 0, 2, b"again") is None  # done: never counted twice
    assert store.get(job).chunks_done == 1


def test_a_chunk_finished_after_a_cancel_is_not_stored(store, conn, chunks, job):
    chunks.claim(job, 0, 1, "w:1")
    store.end(job, JobStatus.CANCELED)
    assert chunks.finish(job, 0, 1, b"late") is None
    assert conn.exists(keys.partials(job)) == 0


# -- requeue and merge ---------------------------------------------------------------------

def test_requeue_gives_the_chunk_to_its_next_attempt_at_the_front(conn, chunks, job):
    chunks.claim(job, 1, 1, "w:1")
    chunks.beat(job, 1, 50)
    assert chunks.requeue(job, 1, 1) is True
    entry = chunks.states(job)[1]
    assert (entry["status"], entry["attempt"], entry["worker"]) == ("queued", 2, None)
    assert conn.hget(keys.chunk_progress(job), "1") == b"0"
    assert conn.zscore(keys.RUNNING, f"{job}#1") is None
    assert conn.zscore(keys.QUEUED, f"{job}#1") is not None
    assert queued_ids(chunks)[0] == rq_chunk_id(job, 1, 2)
    assert chunks.requeue(job, 1, 1) is False  # attempt 1 holds it no more
    assert chunks.states(job)[1]["attempt"] == 2


def test_each_merge_attempt_is_counted_while_the_job_runs(store, conn, chunks, job):
    assert chunks.claim_merge(job) == 1
    assert chunks.claim_merge(job) == 2
    assert store.get(job).merge_attempts == 2
    assert conn.zscore(keys.RUNNING, f"{job}#merge") > time.time() - 5
    store.end(job, JobStatus.CANCELED)
    assert chunks.claim_merge(job) is None
    assert store.get(job).merge_attempts == 2


def test_enqueue_merge_puts_a_merge_message_first(chunks, job):
    chunks.enqueue_merge(job)
    first = chunks.queue.fetch_job(queued_ids(chunks)[0])
    assert first.func_name == TASKS["merge"] and first.args == (job,)
    assert first.id.startswith(f"{job}-cmerge-a")

