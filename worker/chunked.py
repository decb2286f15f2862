"""Names kept for queue messages enqueued by an earlier version: RQ imports a job function
by its path, and a rolling upgrade may still find ``worker.chunked.run_chunk`` or
``run_merge`` messages in the queue. New messages name :data:`pda.jobs.queue.TASKS`."""

from worker.tasks import run_chunk, run_merge

__all__ = ["run_chunk", "run_merge"]
