"""SSIM of relevance maps, as defined by Wang, Bovik, Sheikh, Simoncelli (2004).

Shapes: T maps of H x W pixels; the SSIM map is (T, H - 10, W - 10) ("valid" filtering,
as in the authors' MATLAB code and scikit-image).

Local means, variances and covariance are weighted by an 11 x 11 Gaussian (sigma 1.5),
without the sample-covariance correction; K1 = 0.01, K2 = 0.03. Relevance is signed, so
the data range L of a map is 2 * max |reference map| (it spans -max..max): L sets the
constants C1 = (K1 L)^2 and C2 = (K2 L)^2 below which differences are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...grid import SSIM_SIDE

SIDE = SSIM_SIDE
SIGMA = 1.5
K1, K2 = 0.01, 0.03
#: pixels lost at each border of the SSIM map
MARGIN = SIDE // 2


def gaussian_kernel(side: int = SIDE, sigma: float = SIGMA) -> torch.Tensor:
    """(side, side) float64 weights summing to 1."""
    r = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g2 = g[:, None] * g[None, :]
    return g2 / g2.sum()


def data_range(reference: torch.Tensor) -> torch.Tensor:
    """L = 2 max |map| per map: (T, H, W) -> (T,); a zero map gets L = 1."""
    peak = reference.abs().flatten(1).amax(1).double()  # (T,)
    return torch.where(peak > 0, 2 * peak, torch.ones_like(peak))


def ssim_map(a: torch.Tensor, b: torch.Tensor, rng: torch.Tensor) -> torch.Tensor:
    """Local SSIM of maps ``a``, ``b`` (T, H, W) with data ranges ``rng`` (T,)."""
    T, H, W = a.shape
    if H < SIDE or W < SIDE:
        raise ValueError(f"SSIM needs maps of at least {SIDE}x{SIDE} pixels, got {H}x{W}")
    w = gaussian_kernel().to(a.device)[None, None]  # (1, 1, 11, 11)
    x = torch.stack([a, b, a * a, b * b, a * b], 1).double().reshape(T * 5, 1, H, W)
    m = F.conv2d(x, w).reshape(T, 5, H - 2 * MARGIN, W - 2 * MARGIN)
    mu_a, mu_b = m[:, 0], m[:, 1]  # (T, H-10, W-10)
    var_a, var_b = m[:, 2] - mu_a**2, m[:, 3] - mu_b**2
    cov = m[:, 4] - mu_a * mu_b
    c1 = ((K1 * rng) ** 2).view(T, 1, 1).to(a.device)
    c2 = ((K2 * rng) ** 2).view(T, 1, 1).to(a.device)
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per map (T,), data range 2 max |exact|."""
    return ssim_map(approx, exact, data_range(exact)).flatten(1).mean(1)
