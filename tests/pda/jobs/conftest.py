"""The pda/jobs unit tests' fixtures: a job store on the session's throwaway Redis
(tests/conftest.py: ``clean_redis`` empties its database around every test), and jobs
written straight into it in the state a test starts from. No worker processes: the tests
call the functions and read the keys they leave."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from pda.jobs.record import JobRecord, JobStatus
from pda.jobs.store import JobStore, new_job_id
from pda.settings import Settings
from tests.support.service import make_settings

#: how long the fixtures' results live (seconds): distinct from every default, so a TTL
#: read back shows which setting set it
RESULT_TTL = 3600


@pytest.fixture
def conn(clean_redis: redis.Redis) -> redis.Redis:
    """The session's Redis, its database emptied before and after the test."""
    return clean_redis


@pytest.fixture
def store(conn: redis.Redis) -> JobStore:
    return JobStore(conn, result_ttl=RESULT_TTL)


@pytest.fixture
def settings(conn: redis.Redis) -> Settings:
    """A queue of the test's own on the session's Redis, and results that live an hour."""
    return make_settings(result_ttl_seconds=RESULT_TTL)


@pytest.fixture
def new_job(store: JobStore) -> Callable[..., str]:
    """``new_job(status, attempt=1, **fields)``: a job stored as the API stores one (record,
    image, queued index), then set to ``status``; its id."""
    def make(status: JobStatus = JobStatus.QUEUED, attempt: int = 1, **fields) -> str:
        job_id = new_job_id()
        store.create(JobRecord(id=job_id, status=JobStatus.QUEUED, owner="o", model="m",
                               attempt=attempt, planned_passes=99, progress_total=99),
                     b"image bytes", live_seconds=600)
        if status in (JobStatus.RUNNING, JobStatus.FINISHED):
            assert store.mark_running(job_id, "w:1", attempt)
        if status == JobStatus.FINISHED:
            assert store.finish(job_id, {"result.json": b"{}"}, attempt)
        elif status in (JobStatus.FAILED, JobStatus.CANCELED):
            assert store.end(job_id, status)
        if fields:
            assert store.update(job_id, **fields)
        return job_id

    return make
