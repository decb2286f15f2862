"""How explanations run, as one frozen object: the backend, precision, device, batch size,
converted-graph cache and the incremental default (nanoGPT's ``GPTConfig`` is the model).

What an explanation computes is :class:`pda.params.ExplainParams`; how it is run is a
:class:`Runtime`. The CLI, the library API and the worker each build one once, from the
deployment's settings (``PDA_*``) and any explicit choices, and pass it down to
:func:`pda.engine.explain.prepare`, which resolves it against the device once
(``auto`` becomes a concrete backend; :func:`pda.engine.backends.resolve_backend`). Torch-free,
so the API process and the settings can name it.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defaults import BACKENDS, DEFAULT_PRECISION, INCREMENTAL_MODES, PRECISION_CHOICES
from .errors import InvalidParameterError

#: the message of the deprecated ``compile`` switch (PDA_COMPILE, --compile, compile=True)
COMPILE_DEPRECATED = ("the compile switch is deprecated and will be removed: use backend "
                      "'compile' (PDA_BACKEND=compile, --backend compile, backend=\"compile\")")


@dataclass(frozen=True)
class Runtime:
    """The runtime choices of explanations; None/"auto" fields are decided per device."""

    backend: str = "auto"  # auto, torch, compile, openvino, onnxruntime (defaults.BACKENDS)
    #: forward passes: auto, fp32, bf16, fp16 (defaults.PRECISION_CHOICES); auto is decided
    #: per device and backend (pda.engine.backends.resolve_precision)
    precision: str = DEFAULT_PRECISION
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    batch_size: int | None = None  # None: automatic for the model and device
    cache_dir: Path | None = None  # converted graphs kept across restarts; None: none
    incremental: str = "auto"  # what a request's incremental="auto" means (PDA_INCREMENTAL)

    def __post_init__(self) -> None:
        for field, value, allowed in (("backend", self.backend, BACKENDS),
                                      ("precision", self.precision, PRECISION_CHOICES),
                                      ("incremental", self.incremental, INCREMENTAL_MODES)):
            if value not in allowed:
                raise InvalidParameterError(
                    f"unknown {field} {value!r}; use {', '.join(allowed)}", field=field)
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidParameterError(f"batch size must be at least 1, got "
                                        f"{self.batch_size}", field="batch_size")
        if self.cache_dir is not None and not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @classmethod
    def from_settings(cls, settings: Any, **choices: Any) -> Runtime:
        """The deployment's runtime (``PDA_BACKEND``, ``PDA_PRECISION``, ``PDA_DEVICE``,
        ``PDA_BATCH_SIZE``, ``PDA_BACKEND_CACHE_DIR``, ``PDA_INCREMENTAL``), with the
        ``choices`` that are not None instead. ``PDA_COMPILE=1`` still means backend
        ``compile`` where the backend is left to auto, with a deprecation warning."""
        backend = settings.backend
        if getattr(settings, "compile", False) and backend == "auto":
            warnings.warn(f"PDA_COMPILE: {COMPILE_DEPRECATED}", FutureWarning, stacklevel=2)
            backend = "compile"
        base = cls(backend=backend, precision=settings.precision, device=settings.device,
                   batch_size=settings.batch_size, cache_dir=settings.backend_cache_dir,
                   incremental=settings.incremental)
        return base.replace(**choices)

    def replace(self, **changes: Any) -> Runtime:
        """A copy with the given fields changed; None leaves a field as it is."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir is not None else None
        return d
