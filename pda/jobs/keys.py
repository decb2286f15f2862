"""Every Redis key name the service uses, from one place (rq's ``Job.key_for`` style).

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
