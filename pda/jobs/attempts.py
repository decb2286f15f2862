"""What one attempt holds in Redis: a whole job, one chunk of a split job, or a merge.

The worker runs every attempt the same way (:class:`worker.attempt.Attempt`: throttled
progress, a heartbeat while it progresses, one place that decides what a stop means).
What differs by kind is which records an attempt writes and how it is given back, and
that lives here, in one small class per kind with the same five methods; with the store
(:mod:`.store`) and the chunk table (:mod:`.chunks`) these are an attempt's only writes.

- :meth:`write` reports progress and answers why to stop (None: go on): the job was
  canceled or ended (:data:`ENDED`), a newer attempt took it over (:data:`TAKEN`), or
  its record is gone from Redis (:data:`LOST`);
- :meth:`beat` is the heartbeat (the member's score in the running index);
- :meth:`give_back` requeues the attempt as the next one (a warm shutdown, a crash
  worth retrying); :meth:`fail` ends the job with a problem document; :meth:`close`
  drops what an ended attempt leaves in the indexes.

:class:`JobCheckpoints` keeps a whole job's sweep segments for its reruns.
"""

from __future__ import annotations

from typing import Any

from ..settings import Settings
from . import lifecycle
from .chunks import MERGE, Chunks, member
from .record import JobRecord, JobStatus
from .store import JobStore, checkpoint_key

#: why an attempt must stop, as :meth:`write` says it
ENDED, TAKEN, LOST = "ended", "taken", "lost"


def _verdict(got: tuple[str, int] | None, attempt: int | None) -> str | None:
    if got is None:
        return LOST
    status, current = got
    if status != JobStatus.RUNNING:
        return ENDED
    if attempt is not None and current != attempt:
        return TAKEN
    return None


class JobHold:
    """Attempt ``attempt`` of a whole job (its record's status and attempt are the hold)."""

    kind = "job"

    def __init__(self, store: JobStore, settings: Settings, record: JobRecord,
                 attempt: int) -> None:
        self.store, self.settings, self.record, self.attempt = store, settings, record, attempt
        self.job_id = self.member = record.id

    #: what failed, in a job's error after its last retry
    work = "the explanation"

    def describe(self) -> str:
        return f"job {self.job_id} attempt {self.attempt}"

    def write(self, progress: dict[str, Any]) -> str | None:
        return _verdict(self.store.report(self.job_id, progress, member=self.member),
                        self.attempt)

    def beat(self) -> None:
        self.store.beat(self.member)

    def give_back(self, reason: str) -> bool:
        """Requeue as the next attempt: at the front after a warm shutdown or a stall,
        at the back after a crash (another job may run first)."""
        return lifecycle.requeue(self.store, self.settings, self.job_id, self.attempt,
                                 self.record.planned_passes, at_front=reason != "crashed",
                                 reason=reason)

    def fail(self, problem: dict[str, Any]) -> None:
        lifecycle.fail(self.store, self.job_id, self.record.model, problem)

    def close(self, outcome: str) -> None:
        if outcome == LOST:  # forget it in the indexes; never re-create the record
            self.store.unindex(self.job_id)


class ChunkHold:
    """Attempt ``attempt`` of chunk ``part`` of a split job (its entry in the chunk table)."""

    kind = "chunk"

    def __init__(self, store: JobStore, settings: Settings, record: JobRecord, part: int,
                 attempt: int) -> None:
        self.store, self.settings, self.record = store, settings, record
        self.part, self.attempt = part, attempt
        self.job_id = record.id
        self.member = member(record.id, part)
        self.chunks = Chunks(store, settings)

    def describe(self) -> str:
        return f"job {self.job_id} chunk {self.part} attempt {self.attempt}"

    @property
    def work(self) -> str:
        return f"chunk {self.part} of the explanation"

    def write(self, progress: dict[str, Any]) -> str | None:
        """A chunk counts its own sweep passes (the job's progress is every chunk's sum,
        never lowered); its preparation only beats. Whether this attempt still holds the
        chunk is asked first, so an attempt that was taken over never writes its count
        over the new attempt's."""
        status = self.store.field(self.job_id, "status")
        if status is None:
            return LOST
        if status != JobStatus.RUNNING:
            return ENDED
        entry = self.chunks.state(self.job_id, self.part) or {}
        if entry.get("attempt") != self.attempt:
            return TAKEN
        if progress.get("phase") == "sweeping":
            if not self.chunks.beat(self.job_id, self.part, progress["phase_done"]):
                return LOST
        else:
            self.beat()
        return None

    def beat(self) -> None:
        self.store.beat(self.member)

    def give_back(self, reason: str) -> bool:
        """The chunk alone is rerun (its siblings' results stay)."""
        return self.chunks.requeue(self.job_id, self.part, self.attempt,
                                   at_front=reason != "crashed")

    def fail(self, problem: dict[str, Any]) -> None:
        lifecycle.fail(self.store, self.job_id, self.record.model, problem)

    def close(self, outcome: str) -> None:
        pass  # the chunk table and the reaper own a chunk's index entries


class MergeHold:
    """Merge attempt ``attempt`` of a split job (counted in its ``merge_attempts``)."""

    kind = "merge"

    def __init__(self, store: JobStore, settings: Settings, record: JobRecord,
                 attempt: int) -> None:
        self.store, self.settings, self.record, self.attempt = store, settings, record, attempt
        self.job_id = record.id
        self.member = member(record.id, MERGE)
        self.chunks = Chunks(store, settings)

    work = "merging the chunks of the explanation"

    def describe(self) -> str:
        return f"job {self.job_id} merge attempt {self.attempt}"

    def write(self, progress: dict[str, Any]) -> str | None:
        # a merge is never taken over (one merge message at a time): only ended or lost
        return _verdict(self.store.report(self.job_id, progress, member=self.member), None)

    def beat(self) -> None:
        self.store.beat(self.member)

    def give_back(self, reason: str) -> bool:
        # a fresh heartbeat first: the reaper must not enqueue a second merge meanwhile
        self.store.beat(self.member)
        self.chunks.enqueue_merge(self.job_id)
        return True

    def fail(self, problem: dict[str, Any]) -> None:
        lifecycle.fail(self.store, self.job_id, self.record.model, problem)

    def close(self, outcome: str) -> None:
        if outcome != "retrying" and outcome != "requeued":
            self.store.unrun(self.member)


Hold = JobHold | ChunkHold | MergeHold


class JobCheckpoints:
    """A whole job's sweep checkpoints in Redis (the engine's ``Checkpoints`` hook):
    hash ``job:{id}:checkpoint``, ``"{start}-{stop}"`` -> partial sums (npz bytes).

    Only the attempt holding the running job writes (compare-and-set on the record), so a
    superseded attempt adds nothing and an ended job's keys are not re-created; the
    segments go with the job's other working keys when it ends."""

    def __init__(self, store: JobStore, record: JobRecord, attempt: int) -> None:
        self.store, self.record, self.attempt = store, record, attempt

    def load(self) -> dict[tuple[int, int], bytes]:
        raw = self.store.r.hgetall(checkpoint_key(self.record.id))
        out = {}
        for k, v in raw.items():
            a, b = k.decode().split("-")
            out[(int(a), int(b))] = v
        return out

    def save(self, segment: tuple[int, int], blob: bytes, passes: int) -> bool:
        """Store one segment if this attempt still holds the running job; ``passes``: the
        sweep passes kept so far (the record's ``checkpoint_passes``)."""
        key = checkpoint_key(self.record.id)

        def then(pipe) -> None:  # noqa: ANN001 (redis pipeline)
            pipe.hset(key, f"{segment[0]}-{segment[1]}", blob)
            pipe.expire(key, self.store.result_ttl)

        return self.store.transition(self.record.id, (JobStatus.RUNNING,), self.attempt,
                                     {"checkpoint_passes": passes}, then=then)

    def resumed(self, passes: int) -> None:
        """Say in the job's resource where this attempt resumed (the sweep passes it
        restored, plus the unmodified image's)."""
        previous = self.record.previous_attempt
        if previous is not None:
            self.store.update(self.record.id,
                              previous_attempt={**previous, "resumed_from": passes + 1})
