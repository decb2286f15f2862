"""Connections, the RQ queue, and enqueueing one attempt of a job.

The job functions RQ runs are named in one table, :data:`TASKS`.
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus

from pda.settings import Settings


def connect(settings: Settings) -> redis.Redis:
    """A Redis connection to ``PDA_REDIS_URL`` (``redis://``, ``rediss://`` or
    ``unix://``; embedded mode's ``pda serve`` sets it to the server it started)."""
    if not settings.redis_url:
        raise RuntimeError("no PDA_REDIS_URL: pda serve starts a Redis of its own in "
                           "embedded mode; everything else needs the URL")
    # Short timeouts so a Redis that is down or hung turns into a quick 503 (one retry
    # on a fresh connection covers a restart), never a request that hangs. RQ's worker
    # raises the read timeout of its own connection above its blocking dequeue.
    timeout = settings.redis_timeout_seconds
    return redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=min(2.0, timeout),
        socket_timeout=timeout, health_check_interval=15, retry_on_timeout=True,
    )


#: The worker's job functions, by what they run: the one table of the paths RQ imports
#: (a rename that misses one fails tests/worker/test_tasks.py, not a queue at run time).
TASKS = {
    "explanation": "worker.tasks.run_explanation",  # one attempt of a whole job
    "chunk": "worker.tasks.run_chunk",  # one attempt of one chunk of a split job
    "merge": "worker.tasks.run_merge",  # the merge of a split job's chunks
    "prediction": "worker.interleave.run_prediction",  # POST /v1/predictions
    "delivery": "worker.deliveries.deliver",  # one attempt of a callback (pda.jobs.deliveries)
}

#: RQ statuses of a message a worker will still run (or is running)
_PENDING = (RQStatus.QUEUED, RQStatus.STARTED, RQStatus.DEFERRED, RQStatus.SCHEDULED)


def message_pending(conn: redis.Redis, rq_id: str) -> bool:
    """Whether RQ still holds the message ``rq_id`` for a worker to run (or running).

    The job record (pda.jobs.store) is the only truth about a job; RQ only carries the
    messages that make workers run it. This is the one question asked of RQ about a
    message, through its public API (docs/architecture.md, "Job bookkeeping")."""
    try:
        return Job.fetch(rq_id, connection=conn).get_status(refresh=False) in _PENDING
    except NoSuchJobError:
        return False


def forget_message(conn: redis.Redis, rq_id: str) -> None:
    """Drop RQ's copy of a message that was taken off its queue by hand (a prediction a
    worker answered outside RQ's loop, or one its caller gave up on)."""
    try:
        Job.fetch(rq_id, connection=conn).delete(remove_from_queue=False)
    except NoSuchJobError:
        pass


def get_queue(settings: Settings, conn: redis.Redis) -> Queue:
    """The explanation queue (RQ list ``rq:queue:`` + PDA_QUEUE_NAME)."""
    return Queue(settings.queue_name, connection=conn)


def predict_queue(settings: Settings, conn: redis.Redis) -> Queue:
    """The short, high-priority queue of /v1/predictions: workers take it first."""
    return Queue(f"{settings.queue_name}-predict", connection=conn)


def batch_queue(settings: Settings, conn: redis.Redis) -> Queue:
    """Batch items (pda.jobs.batches), and the chunks and merges of split ones: workers
    take it last, and a feeder keeps only PDA_BATCH_IN_FLIGHT messages on it, so an
    interactive job waits behind at most those."""
    return Queue(f"{settings.queue_name}-batch", connection=conn)


def queue_for(settings: Settings, conn: redis.Redis, batch: str | None) -> Queue:
    """The queue of a job's attempts (and of its chunks): the batch queue for a batch
    item (its record names its ``batch``), else the explanation queue."""
    return batch_queue(settings, conn) if batch else get_queue(settings, conn)


#: RQ's own job timeout for attempts, chunks and merges: only a far backstop. Liveness is
#: judged by progress (the attempt's heartbeat stops after PDA_STALL_SECONDS without
#: progress, and the reaper reruns it), so a job that keeps progressing on a slow or busy
#: machine is never killed by the clock.
BACKSTOP_SECONDS = 24 * 3600


def job_timeout(settings: Settings, forward_passes: int) -> int:
    """Seconds RQ lets one attempt run: the backstop, whatever the job's size."""
    return BACKSTOP_SECONDS


def rq_job_id(job_id: str, attempt: int) -> str:
    """RQ's id for one attempt (RQ allows letters, digits, '_' and '-')."""
    return f"{job_id}-a{attempt}"


def enqueue_attempt(
    queue: Queue, settings: Settings, job_id: str, attempt: int, forward_passes: int,
    *, at_front: bool = False,
) -> None:
    """Put "run attempt N of job X" on the queue (RQ retries off: the store decides)."""
    timeout = job_timeout(settings, forward_passes)
    queue.enqueue(
        TASKS["explanation"], job_id, attempt,
        job_id=rq_job_id(job_id, attempt), job_timeout=timeout, result_ttl=600,
        failure_ttl=settings.result_ttl_seconds, at_front=at_front,
        description=f"explanation {job_id} attempt {attempt}",
    )
