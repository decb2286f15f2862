"""Every Redis key name the service uses, from one place (rq's ``Job.key_for`` style).

Shared by the job store, the worker registry, predictions and the model catalogue.

All keys start with ``pda:`` so one Redis can be shared with other applications; RQ's
own keys (``rq:...``) carry only "run attempt N of job X" messages.
"""

from __future__ import annotations

PREFIX = "pda:"


def job(job_id: str) -> str:
    """Hash: the job record (JSON-encoded values)."""
    return f"{PREFIX}job:{job_id}"


def image(job_id: str) -> str:
    """String: the uploaded image bytes."""
    return f"{job(job_id)}:image"


def files(job_id: str) -> str:
    """Hash: the job's result files."""
    return f"{job(job_id)}:files"


def repair(job_id: str, attempt: int) -> str:
    """String: who re-enqueues a job whose queue message was lost (one caller wins)."""
    return f"{PREFIX}repair:{job_id}:{attempt}"


def open_jobs(caller: str) -> str:
    """Zset: a caller's not-yet-ended job ids (the per-key queued cap)."""
    return f"{PREFIX}open:{caller}"


def dedup(kind: str, owner: str, key: str) -> str:
    """String: ``digest`` (identical request) or ``idem`` (Idempotency-Key) -> job id."""
    return f"{PREFIX}{kind}:{owner}:{key}"


def rate(caller: str, minute: int) -> str:
    """Counter: a caller's requests in one minute (the rate limit)."""
    return f"{PREFIX}rate:{caller}:{minute}"


#: zset: running job id -> last heartbeat
RUNNING = f"{PREFIX}running"
#: zset: queued job id -> when it was queued
QUEUED = f"{PREFIX}queued"
#: hashes: cluster-wide counters read by /metrics
METRICS_JOBS = f"{PREFIX}metrics:jobs"
METRICS_SWEEP = f"{PREFIX}metrics:sweep"
#: hash: what the workers last measured per model: ``{model}|rate`` (forward passes/s of
#: an attempt's sweep and scores) and ``{model}|prep`` (seconds of its set-up), for the ETA
#: of jobs that have not measured their own yet
METRICS_RATES = f"{PREFIX}metrics:rates"


# --- workers, predictions and model metadata -------------------------------------------

#: zset: worker name -> time of its last heartbeat (pda.jobs.workers)
WORKERS = f"{PREFIX}workers"


def worker(name: str) -> str:
    """String: what a worker last said about itself (JSON)."""
    return f"{PREFIX}worker:{name}"


def prediction(pred_id: str) -> str:
    """String: a /v1/predictions request (JSON); ``:image`` and ``:answer`` beside it."""
    return f"{PREFIX}pred:{pred_id}"


def model(name: str) -> str:
    """String: a model's metadata as a worker published it (pda.catalog)."""
    return f"{PREFIX}model:{name}"


# --- callbacks (pda.jobs.deliveries) ------------------------------------------------------

def delivery(delivery_id: str) -> str:
    """Hash: one event's delivery to one callback URL (its state, its frozen body)."""
    return f"{PREFIX}delivery:{delivery_id}"


#: zset: delivery id -> when its next attempt is due (or when an attempt's lease ends)
DELIVERIES_DUE = f"{PREFIX}deliveries:due"


# --- chunks of a split job (pda.jobs.chunks) ----------------------------------------------

def chunks(job_id: str) -> str:
    """Hash: chunk -> JSON {status, attempt, range, passes, worker}."""
    return f"{job(job_id)}:chunks"


def chunk_progress(job_id: str) -> str:
    """Hash: chunk -> forward passes done by its current attempt."""
    return f"{job(job_id)}:progress"


def partials(job_id: str) -> str:
    """Hash: chunk -> its partial sums (npz bytes)."""
    return f"{job(job_id)}:partials"


# --- batches (pda.jobs.batches) -------------------------------------------------------------

def batch(batch_id: str) -> str:
    """Hash: a batch record (JSON values): owner, parameters, counts fixed at submit."""
    return f"{PREFIX}batch:{batch_id}"


def batch_items(batch_id: str) -> str:
    """List: the batch's items in upload order (JSON {index, filename, job, own, error})."""
    return f"{batch(batch_id)}:items"


def batch_submit(owner: str) -> str:
    """Lock: one batch submit of an owner at a time (the per-key open items cap)."""
    return f"{PREFIX}batches:submit:{owner}"


#: zset: batch id -> created (batches not yet finished or canceled: the feeder's work)
BATCHES_ACTIVE = f"{PREFIX}batches:active"
#: hash: owner -> the turn it was last fed at (round robin across API keys)
BATCHES_TURNS = f"{PREFIX}batches:turns"
#: counter: the feeder's turns
BATCHES_TURN = f"{PREFIX}batches:turn"
#: lock: one feeder at a time
BATCHES_FEED_LOCK = f"{PREFIX}batches:feeding"
#: list whose length is the number of batch items waiting to be fed (a gauge: KEDA's Redis
#: scaler reads list lengths, and the batch queue itself holds only a few messages)
BATCHES_BACKLOG = f"{PREFIX}batches:backlog"
