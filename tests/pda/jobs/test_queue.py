"""Connections and the RQ messages of attempts: names, the one question asked of RQ
(is a message still pending?), and what a connection needs."""

from __future__ import annotations

import subprocess

import fakeredis
import pytest
import redis
from rq.job import Job
from rq.job import JobStatus as RQStatus

from pda.jobs.queue import (
    BACKSTOP_SECONDS,
    connect,
    enqueue_attempt,
    forget_message,
    get_queue,
    job_timeout,
    message_pending,
    predict_queue,
    rq_job_id,
)
from tests.support.service import make_settings
from tests.support.waiting import wait_until


def test_attempt_ids_and_queue_names():
    assert rq_job_id("abc", 3) == "abc-a3"
    settings = make_settings(queue_name="q1")
    conn = fakeredis.FakeRedis()
    assert get_queue(settings, conn).name == "q1"
    assert predict_queue(settings, conn).name == "q1-predict"


def test_every_attempt_gets_the_far_backstop_whatever_its_size():
    settings = make_settings()
    assert job_timeout(settings, 1) == job_timeout(settings, 10**9) == BACKSTOP_SECONDS == 86400


def test_enqueue_attempt_puts_one_message_for_that_attempt(settings, conn):
    queue = get_queue(settings, conn)
    enqueue_attempt(queue, settings, "j1", 1, 99)
    enqueue_attempt(queue, settings, "j2", 4, 99, at_front=True)
    assert queue.job_ids == ["j2-a4", "j1-a1"]
    message = queue.fetch_job("j1-a1")
    assert message.func_name == "worker.tasks.run_explanation"
    assert message.args == ("j1", 1)
    assert message.timeout == BACKSTOP_SECONDS
    assert message.result_ttl == 600 and message.failure_ttl == settings.result_ttl_seconds
    assert message.description == "explanation j1 attempt 1"


def test_a_message_is_pending_while_queued_or_started_and_not_after(settings, conn):
    queue = get_queue(settings, conn)
    enqueue_attempt(queue, settings, "j", 1, 99)
    assert message_pending(conn, "j-a1") is True
    message = queue.fetch_job("j-a1")
    message.set_status(RQStatus.STARTED)
    assert message_pending(conn, "j-a1") is True
    message.set_status(RQStatus.FAILED)
    assert message_pending(conn, "j-a1") is False
    assert message_pending(conn, "never-enqueued-a1") is False


def test_forget_message_drops_rqs_copy_and_tolerates_a_missing_one(settings, conn):
    queue = get_queue(settings, conn)
    enqueue_attempt(queue, settings, "j", 1, 99)
    forget_message(conn, "j-a1")
    assert not conn.exists(Job.key_for("j-a1"))
    forget_message(conn, "j-a1")  # already gone: no error


def test_connect_to_a_url_uses_short_timeouts(conn):
    settings = make_settings(redis_timeout_seconds=1.5)
    real = connect(settings)
    assert isinstance(real, redis.Redis) and real.ping()
    kwargs = real.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 1.5)
    assert connect(make_settings(redis_timeout_seconds=9)).connection_pool.connection_kwargs[
        "socket_connect_timeout"] == 2.0  # connecting never waits longer than 2 s


def test_without_a_url_there_is_no_connection_and_the_error_says_why():
    # embedded mode is a real Redis that pda serve starts (service.embedded); no fake
    with pytest.raises(RuntimeError, match="no PDA_REDIS_URL"):
        connect(make_settings(redis_url=None))


def test_a_unix_socket_url_connects(tmp_path):
    from tests.support.servers import REDIS_SERVER

    sock = tmp_path / "r.sock"
    proc = subprocess.Popen([REDIS_SERVER, "--port", "0", "--unixsocket", str(sock),
                             "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        conn = connect(make_settings(redis_url=f"unix://{sock}"))
        wait_until("redis on its socket", lambda: sock.exists() and conn.ping(), timeout=20)
        conn.set("k", b"v")
        assert conn.get("k") == b"v"
    finally:
        proc.terminate()
        proc.wait(10)
