"""Model inputs as tensors: the pixel-space image (3, H, W) in [0, 1] the engine explains.

:mod:`pda.images` decodes and fits photos with Pillow and NumPy alone (the API uses it);
this is the thin torch side of it.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..images import fit_array


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


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Pixel-space tensor (3, H, W) in [0, 1] -> (H, W, 3) uint8 (``input.png``)."""
    arr = x.detach().to("cpu", torch.float32).numpy()
    return (np.clip(arr.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
