"""Model inputs as tensors: the pixel-space image (3, H, W) in [0, 1] the engine explains.

:mod:`pda.images` decodes and fits photos with Pillow and NumPy alone (the API uses it);
this is the thin torch side of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..images import fit_array, open_image


class Normalise(nn.Module):
    """Pixel space (B, C, H, W) in [0, 1] to a model's input space, (x - mean) / std per
    channel. The one normalisation: a model's own calls (``LoadedModel.normaliser``),
    every backend's converted graph and the incremental trace run this module."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std  # (B, C, H, W); float64 input stays float64


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # (3, H, W) uint8
    return x.to(torch.float32).div_(255.0).contiguous()


def preprocess(img: Image.Image, input_size: tuple[int, int], fit: str
               ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The model input x (3, H, W) in [0, 1] and the photo's crop box (left, top, right,
    bottom) in its original pixels (:func:`pda.images.fit_array`)."""
    a, place = fit_array(img, input_size, fit)
    return to_tensor(a), place.crop_box


@dataclass
class ModelInput:
    """A photo made into a model's input: the decoded photo (EXIF applied, reduced to what
    the model needs), the input x (3, H, W) in [0, 1] and the photo's crop box."""

    photo: Image.Image
    x: torch.Tensor
    crop: tuple[int, int, int, int]


def model_input(source: str | Path | bytes, input_size: tuple[int, int], fit: str, *,
                max_pixels: int | None = None) -> ModelInput:
    """Decode ``source`` (a path or the file's bytes, untrusted: :func:`pda.images.
    open_image` caps its pixels) and fit it to ``input_size``: the one way every process
    (library, worker, predictions, evaluation) turns an image into a model's input."""
    photo = open_image(source, max_pixels=max_pixels, fit_to=input_size)
    x, crop = preprocess(photo, input_size, fit)
    return ModelInput(photo, x, crop)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Pixel-space tensor (3, H, W) in [0, 1] -> (H, W, 3) uint8 (``input.png``)."""
    arr = x.detach().to("cpu", torch.float32).numpy()
    return (np.clip(arr.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
