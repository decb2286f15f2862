"""Device, batch-size, memory-layout and precision choices.

Everything here is measured by ``pda bench``; docs/performance.md has the numbers behind
each default.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .. import defaults
from ..errors import InvalidParameterError

#: the precisions a sweep can run in; bf16/fp16 use autocast around the model call only
#: (inputs, readouts and accumulation stay fp32/fp64)
PRECISIONS: dict[str, torch.dtype | None] = dict(zip(
    defaults.PRECISIONS, (None, torch.bfloat16, torch.float16), strict=True))
#: CPU batches at 224 x 224 by parameter count (docs/performance.md, 2 cores): convolutional
#: models run fastest at a few images per call, while activations stay in cache
#: (EfficientNet-Lite0, GoogLeNet, ResNet-50 peak at 4; Lite0 loses half by 32); models
#: whose weights are mostly fully connected layers (AlexNet, VGG: >= 50M parameters) gain
#: from reusing those weights across a larger batch. Without a model: the default model's.
CPU_BATCHES = ((50e6, 4), (float("inf"), 32))
CPU_BATCH = 4
GPU_MAX_BATCH = 1024


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidParameterError("device cuda requested but no CUDA GPU is available",
                                        field="device")
        return torch.device(name)
    raise InvalidParameterError(f"unknown device {name!r}; use auto, cpu or cuda",
                                field="device")


def auto_batch_size(
    device: torch.device, input_size: tuple[int, int] = (224, 224), model: Any = None
) -> int:
    """A batch large enough to keep the device busy and small enough to fit.

    CPU: by the model's parameter count (:data:`CPU_BATCHES`), scaled by pixels. GPU: with
    ``model`` given, one probe forward pass measures the memory an image needs and the
    batch takes about half of the free memory; without it, ~40 MB per 224 x 224 image is
    assumed. Capped at :data:`GPU_MAX_BATCH`, rounded down to a power of two.
    ``pda bench`` measures the best batch for a model on a machine; the service's
    ``PDA_BATCH_SIZE`` and the CLI's ``--batch-size`` override this choice.
    """
    H, W = input_size
    pixels = H * W
    if device.type != "cuda":
        batch = CPU_BATCH
        if model is not None and hasattr(model, "module"):
            n = sum(p.numel() for p in model.module.parameters())
            batch = next(b for limit, b in CPU_BATCHES if n < limit)
        return max(1, min(64, int(batch * (224 * 224) / pixels)))
    per_image = _probe_image_bytes(model, device, input_size) if model is not None else None
    if per_image is None:
        per_image = 40e6 * pixels / (224 * 224)
    free, _ = torch.cuda.mem_get_info(device)
    n = int(max(16, min(GPU_MAX_BATCH, free * 0.5 / per_image)))
    return 1 << (n.bit_length() - 1)


def _probe_image_bytes(model: Any, device: torch.device, input_size: tuple[int, int]
                       ) -> float | None:
    """Peak activation memory per image of one forward pass at batch 8 (None on failure)."""
    n = 8
    try:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model(torch.rand(n, 3, *input_size, device=device))
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    except RuntimeError:  # out of memory even at 8, or a model that refuses the probe
        return None
    return max(peak / n, 1e6)


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None for fp32); a clear error if unusable."""
    if precision not in PRECISIONS:
        raise InvalidParameterError(
            f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}", field="precision")
    dtype = PRECISIONS[precision]
    if dtype is not None and not torch.amp.is_autocast_available(device.type):
        raise InvalidParameterError(
            f"precision {precision} needs autocast, which torch does not offer on "
            f"{device.type}; use fp32", field="precision")
    return dtype


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed precision around the model call: convolutions and matmuls in bf16/fp16."""
    dtype = check_precision(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prefers_channels_last(device: torch.device) -> bool:
    """NHWC batches: oneDNN (CPU) and cuDNN with tensor cores run convolutions in NHWC;
    NCHW input costs a reorder per layer (docs/performance.md measures the difference)."""
    return device.type in ("cpu", "cuda")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device``; through pinned memory, without blocking, to a GPU."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
