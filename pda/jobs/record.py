"""A job's record: its states (:class:`JobStatus`) and its typed fields (:class:`JobRecord`).

The record in Redis (a hash, one JSON-encoded value per field) is the truth about a job;
RQ only carries "run attempt N of job X" messages. :mod:`.lifecycle` moves a record
between states; :mod:`.store` reads and writes it.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def active(self) -> bool:
        """Queued or running: it may still produce a result."""
        return self in (JobStatus.QUEUED, JobStatus.RUNNING)


#: why an attempt was rerun: its worker stopped beating (SIGKILL, OOM, a hung process),
#: it reported no progress for PDA_STALL_SECONDS, a warm shutdown gave it back, it
#: crashed with an error (retried), or its queue message was lost
REASONS = ("worker_lost", "stalled", "shutdown", "crashed", "message_lost")

TERMINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED})


class JobRecord(BaseModel):
    """Every field a job's record may hold; set as the job moves through its life."""

    model_config = ConfigDict(extra="ignore")  # fields of a newer version are skipped

    id: str
    status: JobStatus
    owner: str
    model: str = ""
    params: dict[str, Any] = {}
    digest: str = ""
    created_at: str = ""
    attempt: int = 1
    planned_passes: int = 0
    progress_done: int = 0
    progress_total: int = 0
    progress_rate: float | None = None  # passes/s this attempt measured (pda.eta)
    # what the attempt is doing (pda.defaults.PHASES) and that phase's own count: steps
    # while preparing, forward passes while sweeping or scoring
    phase: str = "queued"
    phase_done: int = 0
    phase_total: int = 0
    image: dict[str, Any] = {}
    # running
    started_at: str | None = None
    worker: str | None = None
    heartbeat_at: float | None = None
    prediction: list[dict[str, Any]] | None = None
    # ended
    finished_at: str | None = None
    canceled_at: str | None = None
    expires_at: str | None = None
    error: dict[str, Any] | None = None
    files: list[str] | None = None
    targets: list[dict[str, Any]] | None = None
    unit: str | None = None
    coverage: dict[str, Any] | None = None
    forward_passes: int | None = None
    seconds: float | None = None
    # split jobs (pda.jobs.chunks): the plan the chunks share, and their count
    chunks_total: int | None = None
    chunks_done: int = 0
    labels: list[str] | None = None
    merge_attempts: int = 0
    # reruns (pda.jobs.attempts.JobCheckpoints): why the previous attempt ended (REASONS), when, and
    # where this one resumed; the sweep passes kept in checkpoints so far
    previous_attempt: dict[str, Any] | None = None
    checkpoint_passes: int = 0
    # callbacks (pda.jobs.deliveries): one entry per callback URL, "waiting" until the job
    # ends, then the state of its event's delivery (mirrored by the delivery attempts)
    callbacks: list[dict[str, Any]] | None = None
    # a batch item (pda.jobs.batches): its batch's id; its attempts, chunks and merges
    # go on the batch queue
    batch: str | None = None
    # raised by every write of the record: event streams send what is newer than the
    # version a client last saw (Last-Event-ID)
    version: int = 0

    def __getitem__(self, name: str) -> Any:
        """``record["status"]``: read access by field name, as for the plain hash."""
        return getattr(self, name)

    @classmethod
    def decode(cls, raw: dict[bytes, bytes]) -> JobRecord:
        """From a Redis hash of JSON-encoded values."""
        return cls.model_validate({k.decode(): json.loads(v) for k, v in raw.items()})

    def encode(self) -> dict[str, str]:
        """To a Redis hash of JSON-encoded values (fields left unset are not written)."""
        return encode(self.model_dump(mode="json", exclude_unset=True))


def encode(fields: dict[str, Any]) -> dict[str, str]:
    """Field values as the record stores them: one JSON document each."""
    return {k: json.dumps(v) for k, v in fields.items()}
