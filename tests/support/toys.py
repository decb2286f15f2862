"""Tiny models with hand-set weights, so expected relevance maps are literal numbers."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pda.engine.stats import SamplerStats
from pda.models.registry import LoadedModel


class RegionModel(nn.Module):
    """Two classes; logit 0 = gain * mean red value inside ``region``, logit 1 = 0."""

    def __init__(self, region: tuple[slice, slice], gain: float = 8.0) -> None:
        super().__init__()
        self.region = region
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = self.region
        z = self.gain * x[:, 0, r, c].mean(dim=(1, 2))
        return torch.stack([z, torch.zeros_like(z)], dim=1)  # (N, 2)


class LinearModel(nn.Module):
    """Two classes; logit 0 = sum(weight * red channel) + bias, logit 1 = 0."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.weight = weight  # (H, W)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, 0] * self.weight).sum(dim=(1, 2)) + self.bias
        return torch.stack([z, torch.zeros_like(z)], dim=1)


class ConvNet(nn.Module):
    """A small CNN with named layers, random but fixed weights (for shapes and hooks)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8, classes)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def wrap(module: nn.Module, size: int, classes: int = 2) -> LoadedModel:
    """A :class:`LoadedModel` in pixel space (identity normalisation)."""
    return LoadedModel(
        "toy", module.eval(), input_size=(size, size), mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), labels=[f"class{i}" for i in range(classes)],
        device=torch.device("cpu"), source="test",
    )


def random_stats(seed: int = 0, n: int = 6, side: int = 64) -> SamplerStats:
    """Reference 'images' of smooth random noise (so patch covariances are not diagonal)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((n, side // 4, side // 4, 3))
    imgs = noise.repeat(4, axis=1).repeat(4, axis=2)  # (n, side, side, 3) blocky
    return SamplerStats((imgs * 255).astype(np.uint8))


class BoxModel(RegionModel):
    """Logit 0 = gain * (mean red inside the box - 0.5): p(class 0) runs from about 0 (a
    dark box) to about 1 (a bright one); the model reads nothing else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        return z - torch.tensor([self.gain * 0.5, 0.0])


def box_case(size: int = 32):
    """The box model on a dim image with a bright red box where it looks: (model, x)."""
    region = (slice(8, 16), slice(20, 28))
    model = wrap(BoxModel(region, gain=12.0), size)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, size, size, generator=g) * 0.3
    x[0, region[0], region[1]] = 1.0  # class 0's evidence: a bright red box
    return model, x
