"""Device and batch-size choices."""

from __future__ import annotations

import torch

from .errors import InvalidParameterError


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


def auto_batch_size(device: torch.device, input_size: tuple[int, int] = (224, 224)) -> int:
    """A batch large enough to keep the device busy and small enough to fit.

    CPU throughput is flat beyond a few dozen images (docs/performance.md); on a GPU the
    batch is sized to about a quarter of free memory at ~40 MB per 224 x 224 image
    (activations of a mid-size CNN in inference mode), capped at 512.
    """
    pixels = input_size[0] * input_size[1]
    if device.type != "cuda":
        return max(8, min(64, int(32 * (224 * 224) / pixels)))
    free, _ = torch.cuda.mem_get_info(device)
    per_image = 40e6 * pixels / (224 * 224)
    return int(max(16, min(512, free * 0.25 / per_image)))
