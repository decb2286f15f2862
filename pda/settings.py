"""Every ``PDA_`` setting, read once from the environment.

The API and the worker read the same class, so one name means the same thing in both.
Algorithm defaults (window, samples, ...) stay as function defaults in the engine; what
is here is deployment configuration. Tests replace :func:`get_settings` through
``get_settings.cache_clear()`` and environment variables.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .defaults import BACKENDS, INCREMENTAL_MODES, PRECISIONS

#: settings that no longer exist: accepted, ignored, and warned about
REMOVED = ("PDA_JOB_TIMEOUT_FLOOR_SECONDS", "PDA_ASSUMED_PASSES_PER_SECOND")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PDA_", extra="ignore")

    # --- where things are --------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis URL for the queue and results; unset = embedded mode"
    )
    queue_name: str = Field("pda", description="RQ queue name shared by API and workers")
    model_dir: Path | None = Field(
        None, description="folder of user models (NAME.pt2 or NAME.pt with NAME.json)"
    )
    weights_dir: Path | None = Field(
        None,
        description="folder of torchvision weight files (alexnet.pth, vgg16.pth, ...)",
    )
    sampler_stats: Path | None = Field(
        None, description="sampler statistics file from `pda fit-sampler`; unset = built-in"
    )

    # --- compute -----------------------------------------------------------------
    device: str = Field("auto", description="auto, cpu or cuda")
    batch_size: int | None = Field(None, ge=1, description="forward batch size; unset = auto")
    precision: Literal[PRECISIONS] = Field(
        "fp32", description="fp32, bf16 or fp16 (bf16/fp16 pay off on GPU only)"
    )
    compile: bool = Field(
        False, description="deprecated: use PDA_BACKEND=compile (still honoured, with a "
        "warning, where PDA_BACKEND is auto)"
    )
    incremental: Literal[INCREMENTAL_MODES] = Field(
        "auto", description="exact incremental inference when a request leaves it at auto: "
        "on, off, or auto = where the bench measured it faster (pda/data/incremental.json)"
    )
    backend: Literal[BACKENDS] = Field(
        "auto", description="execution backend: auto = the fastest exact one for the device "
        "(OpenVINO f32 on a CPU where installed, else torch; torch.compile on CUDA)"
    )
    backend_cache_dir: Path | None = Field(
        Path.home() / ".cache" / "pda" / "backends",
        description="converted models (OpenVINO IR, ONNX) kept across restarts; unset = none",
    )
    default_model: str = "efficientnet_lite0"
    worker_models: str = Field(
        "efficientnet_lite0", description="comma-separated models a worker loads at start"
    )

    # --- HTTP --------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    api_keys: str = Field("", description="comma-separated API keys; empty = no auth")

    # --- limits ------------------------------------------------------------------
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="decompression-bomb cap")
    max_concurrent_decodes: int = Field(
        2, ge=1, description="uploads the API decodes at once (each large one holds its "
        "decoded pixels: this bounds the API's memory under a burst)"
    )
    max_forward_passes: int = Field(
        500_000, ge=1, description="reject jobs that need more forward passes than this"
    )
    max_queue_length: int = Field(1000, ge=1, description="global queued-jobs cap (503)")
    max_queued_per_key: int = Field(50, ge=1, description="queued jobs per API key (429)")
    rate_limit_per_minute: int = Field(600, ge=1, description="requests per key per minute")
    chunk_passes: int = Field(
        20_000, ge=0, description="split a job into chunks (whole window blocks) of about "
        "this many forward passes, which any worker may run; 0 = never split"
    )
    chunks_in_flight: int = Field(
        8, ge=1, description="queued chunks per split job: it appends the next when one "
        "ends, so chunks of different jobs take turns"
    )
    predict_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="how long POST /v1/predictions waits for a worker "
        "before answering 503 with Retry-After"
    )
    worker_memory_bytes: int = Field(
        4 * 1024 ** 3, ge=1, description="memory of one worker (the k8s worker's limit, "
        "4Gi): a job whose sampler would not fit beside the model and the sampler cache is "
        "refused at submit, naming what fits (pda.costs)"
    )
    sampler_cache_bytes: int = Field(
        512 * 1024 ** 2, ge=0, description="a worker's in-memory cache of sampler factors "
        "(least recently used out): a second job of a window reuses them"
    )
    sampler_disk_bytes: int = Field(
        2 * 1024 ** 3, ge=0, description="the same factors on disk, under "
        "PDA_BACKEND_CACHE_DIR/sampler, shared by the worker processes of a machine"
    )
    redis_timeout_seconds: float = Field(
        5.0, gt=0, description="socket timeout of the API's and the job store's Redis calls"
    )

    # --- jobs --------------------------------------------------------------------
    result_ttl_seconds: int = Field(24 * 3600, ge=1, description="how long results live")
    stall_seconds: float = Field(
        300.0, gt=0, description="a running attempt that has reported no progress for this "
        "long is taken as stuck: its heartbeat stops and it is rerun (from its checkpoint)"
    )
    job_retries: int = Field(2, ge=0, description="reruns of a job after a crash")
    heartbeat_file: Path = Field(
        Path("/tmp/pda-worker.heartbeat"), description="file a worker touches while alive"
    )
    heartbeat_interval_seconds: float = Field(10.0, gt=0)
    stale_job_seconds: float = Field(
        30.0, gt=0, description="a running job whose heartbeat is this old is rerun elsewhere"
    )
    worker_fresh_seconds: float = Field(
        30.0, gt=0, description="a worker counts as alive while its heartbeat is this recent "
        "(it beats every PDA_HEARTBEAT_INTERVAL_SECONDS, busy or idle)"
    )

    @model_validator(mode="after")
    def _warn_removed(self) -> Settings:
        # jobs are no longer killed by a clock (docs/reliability.md, "Liveness"): these
        # are read from old deployments' environments and ignored, with a warning
        for name in REMOVED:
            if name in os.environ:
                warnings.warn(f"{name} is ignored: a job that makes progress is never "
                              "timed out (PDA_STALL_SECONDS detects stuck attempts)",
                              FutureWarning, stacklevel=2)
        return self

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def sampler_cache_dir(self) -> Path | None:
        """Where sampler factors are kept on disk: PDA_BACKEND_CACHE_DIR/sampler, or None."""
        if self.backend_cache_dir is None or self.sampler_disk_bytes == 0:
            return None
        return self.backend_cache_dir / "sampler"

    @property
    def worker_model_list(self) -> list[str]:
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
