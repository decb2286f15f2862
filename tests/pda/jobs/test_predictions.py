"""Predictions through a worker, on a real Redis and without one: the request stored and
queued, claimed off the queue by a worker holding the model, answered, and handed to the
caller waiting on it; a caller that gives up leaves nothing to answer."""

from __future__ import annotations

import json
import threading

import pytest
from rq.job import Job

from pda.jobs import predictions
from pda.jobs.queue import predict_queue


@pytest.fixture
def queue(settings, conn):
    return predict_queue(settings, conn)


def ask(conn, queue, pred_id: str, model: str = "m", timeout: float = 10) -> None:
    predictions.submit(conn, queue, pred_id, {"model": model, "top": 3}, b"img-" +
                       pred_id.encode(), timeout)


def test_submit_stores_request_and_image_and_queues_one_message(conn, queue):
    ask(conn, queue, "p1", timeout=10)
    assert json.loads(conn.get(predictions.request_key("p1"))) == {"model": "m", "top": 3}
    assert conn.get(predictions.image_key("p1")) == b"img-p1"
    assert 68 <= conn.ttl(predictions.request_key("p1")) <= 70  # the wait and a minute
    assert queue.job_ids == ["pred-p1"]
    message = queue.fetch_job("pred-p1")
    assert message.func_name == "worker.interleave.run_prediction"
    assert message.args == ("p1",) and message.ttl == 70 and message.result_ttl == 0
    assert predictions.load(conn, "p1") == ({"model": "m", "top": 3}, b"img-p1")


def test_a_claimed_request_is_answered_to_the_waiting_caller(conn, queue):
    ask(conn, queue, "p1")
    got: list[dict] = []
    caller = threading.Thread(target=lambda: got.append(
        predictions.wait(conn, "p1", timeout=10, poll=0.2)))
    caller.start()
    assert predictions.claim(conn, queue, {"m"}, limit=1) == ["p1"]
    assert queue.job_ids == []  # taken off the queue: no other worker runs it
    request, image = predictions.load(conn, "p1")
    predictions.answer(conn, "p1", {"prediction": [{"label": "cat"}], "image": len(image)})
    predictions.done(conn, "p1")
    caller.join(10)
    assert got == [{"prediction": [{"label": "cat"}], "image": 6}]
    assert not conn.exists(predictions.request_key("p1"), predictions.image_key("p1"))
    assert not conn.exists(predictions.answer_key("p1"))  # the caller popped it
    assert not conn.exists(Job.key_for("pred-p1"))


def test_an_answer_before_the_wait_is_kept_for_a_minute(conn):
    predictions.answer(conn, "p", {"ok": True})
    assert 58 <= conn.ttl(predictions.answer_key("p")) <= 60
    assert predictions.wait(conn, "p", timeout=1) == {"ok": True}


def test_no_answer_in_time_raises_no_answer(conn):
    with pytest.raises(predictions.NoAnswer):
        predictions.wait(conn, "nobody", timeout=0.3, poll=0.1)


def test_claim_takes_the_oldest_for_the_models_held_up_to_the_limit(conn, queue):
    for pred_id, model in [("a", "m"), ("b", "other"), ("c", "m"), ("d", "m")]:
        ask(conn, queue, pred_id, model)
    assert predictions.claim(conn, queue, {"m"}, limit=2) == ["a", "c"]
    assert queue.job_ids == ["pred-b", "pred-d"]
    assert predictions.claim(conn, queue, {"m"}, limit=5) == ["d"]
    assert predictions.claim(conn, queue, {"m"}, limit=5) == []
    assert queue.job_ids == ["pred-b"]  # for a worker that holds "other"


def test_claim_drops_a_given_up_request_and_leaves_one_it_cannot_read(conn, queue):
    ask(conn, queue, "gone")
    conn.delete(predictions.request_key("gone"))  # its caller gave up, RQ's copy remains
    ask(conn, queue, "bad")
    conn.set(predictions.request_key("bad"), b"not json")
    assert predictions.claim(conn, queue, {"m"}, limit=5) == []
    assert queue.job_ids == ["pred-bad"]  # RQ's loop runs it and answers the error
    assert not conn.exists(Job.key_for("pred-gone"))


def test_claim_looks_only_at_the_first_messages(conn, queue):
    for i in range(3):
        ask(conn, queue, f"o{i}", "other")
    ask(conn, queue, "mine")
    assert predictions.claim(conn, queue, {"m"}, limit=1, scan=3) == []
    assert predictions.claim(conn, queue, {"m"}, limit=1, scan=4) == ["mine"]


def test_withdraw_before_a_claim_drops_message_and_request(conn, queue):
    ask(conn, queue, "p")
    predictions.withdraw(conn, queue, "p")
    assert queue.job_ids == [] and not conn.exists(Job.key_for("pred-p"))
    assert predictions.load(conn, "p") is None
    assert predictions.claim(conn, queue, {"m"}, limit=1) == []


def test_withdraw_after_a_claim_leaves_rqs_copy_for_the_worker(conn, queue):
    ask(conn, queue, "p")
    assert predictions.claim(conn, queue, {"m"}, limit=1) == ["p"]
    predictions.withdraw(conn, queue, "p")
    assert predictions.load(conn, "p") is None  # the worker finds nothing to answer
    assert conn.exists(Job.key_for("pred-p"))
    predictions.done(conn, "p")
    assert not conn.exists(Job.key_for("pred-p"))
