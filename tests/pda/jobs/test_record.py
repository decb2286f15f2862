"""A job's record: its states, and its fields as the Redis hash stores them (one JSON
document per field, only the fields that were set)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pda.jobs.record import REASONS, TERMINAL, JobRecord, JobStatus, encode


def test_only_queued_and_running_are_active_and_the_other_three_are_terminal():
    assert [s.value for s in JobStatus if s.active] == ["queued", "running"]
    assert TERMINAL == {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED}
    assert not any(s.active for s in TERMINAL)
    assert REASONS == ("worker_lost", "stalled", "shutdown", "crashed", "message_lost")


def test_a_record_encodes_only_the_fields_set_each_as_json():
    rec = JobRecord(id="j", status=JobStatus.RUNNING, owner="o", params={"window": 16},
                    progress_rate=None, prediction=[{"label": "cat", "p": 0.5}])
    assert rec.encode() == {
        "id": '"j"', "status": '"running"', "owner": '"o"', "params": '{"window": 16}',
        "progress_rate": "null", "prediction": '[{"label": "cat", "p": 0.5}]'}


def test_a_stored_hash_decodes_to_the_same_record_with_defaults_for_the_rest():
    rec = JobRecord(id="j", status=JobStatus.FINISHED, owner="o", attempt=3,
                    files=["result.json"], seconds=1.5,
                    previous_attempt={"attempt": 2, "ended": "stalled"})
    raw = {k.encode(): v.encode() for k, v in rec.encode().items()}
    back = JobRecord.decode(raw)
    assert back == rec
    assert back.status is JobStatus.FINISHED and back["attempt"] == 3
    assert (back.progress_done, back.chunks_done, back.worker, back.chunks_total) == (
        0, 0, None, None)


def test_fields_of_a_newer_version_are_skipped_and_a_bad_status_is_refused():
    rec = JobRecord.decode({b"id": b'"j"', b"status": b'"queued"', b"owner": b'"o"',
                            b"written_by_v9": b'{"x": 1}'})
    assert rec.id == "j" and not hasattr(rec, "written_by_v9")
    with pytest.raises(ValidationError):
        JobRecord.decode({b"id": b'"j"', b"status": b'"paused"', b"owner": b'"o"'})


def test_read_access_by_field_name_is_the_attribute():
    rec = JobRecord(id="j", status=JobStatus.QUEUED, owner="o", planned_passes=7)
    assert rec["planned_passes"] == 7 and rec["status"] == "queued"
    with pytest.raises(AttributeError):
        rec["no_such_field"]


def test_encode_writes_one_json_document_per_value():
    fields = {"a": None, "b": [1, 2], "c": "x", "d": JobStatus.CANCELED}
    assert encode(fields) == {"a": "null", "b": "[1, 2]", "c": '"x"', "d": '"canceled"'}
    assert {k: json.loads(v) for k, v in encode(fields).items()} == {
        "a": None, "b": [1, 2], "c": "x", "d": "canceled"}
