"""What replaces a window: conditional, marginal and constant samplers (docs/algorithm.md §3).

Every sampler works in pixel space (RGB in [0, 1]) on one image ``x`` (C, H, W) and a
fixed list of window corners (n_w, 2). ``sample(ids, S, generator)`` returns the values
for windows ``ids`` (B,) as (B, S, C, k, k) on the image's device; the engine passes
``ids`` on the CPU, so grouping windows never waits for a GPU. A sampler draws its random
numbers for the whole call in one fixed order, so the engine gets the same samples
however it later batches them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..costs import dense_cost, dense_fits
from ..defaults import DETERMINISTIC_SAMPLERS, SAMPLERS
from ..errors import InvalidParameterError, SamplerMemoryError
from .cache import cached
from .device import to_device
from .stationary import JITTER as RING_JITTER
from .stationary import StationarySampler
from .stats import SamplerStats


class Sampler(Protocol):
    #: True when every sample is the same (the engine then makes one pass per window)
    deterministic: bool

    def sample(self, ids: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        ...


def border_clips(positions: torch.Tensor, k: int, p: int, H: int, W: int) -> torch.Tensor:
    """How many ring rows/cols each window's l x l patch loses at each border (top, bottom,
    left, right), 0..p: (n_w, 4) on the CPU. One geometry per distinct row."""
    pos = positions.cpu()
    r, c = pos[:, 0], pos[:, 1]
    return torch.stack(
        [(p - r).clamp(min=0), (r + k + p - H).clamp(min=0),
         (p - c).clamp(min=0), (c + k + p - W).clamp(min=0)], dim=1,
    )  # (n_w, 4)


def _window_index(positions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of each window's pixels: (B, k, 1) and (B, 1, k)."""
    offs = torch.arange(k, device=positions.device)
    rows = (positions[:, 0:1] + offs)[:, :, None]  # (B, k, 1)
    cols = (positions[:, 1:2] + offs)[:, None, :]  # (B, 1, k)
    return rows, cols


class ConstantSampler:
    """Fill the window with one colour: occlusion (S = 1 is enough, it is deterministic)."""

    deterministic = "constant" in DETERMINISTIC_SAMPLERS

    def __init__(self, x: torch.Tensor, window: int, fill: torch.Tensor) -> None:
        C = x.shape[0]
        fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).flatten()
        if fill.numel() != C:
            raise InvalidParameterError(f"fill needs {C} values, got {fill.numel()}", field="fill")
        if (fill < 0).any() or (fill > 1).any():
            raise InvalidParameterError("fill values must lie in [0, 1]", field="fill")
        self.patch = fill[:, None, None].expand(C, window, window)  # (C, k, k)

    def sample(self, ids: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        return self.patch.expand(len(ids), samples, *self.patch.shape)  # (B, S, C, k, k)


class MarginalSampler:
    """Window values from random reference images at the same place (drawn at random,
    unlike the authors' first-S-images, which could include the test image itself)."""

    deterministic = False

    def __init__(
        self, x: torch.Tensor, window: int, positions: torch.Tensor, references: torch.Tensor
    ) -> None:
        # references: (R, C, H, W) pixel-space images at the model's input size
        if references.shape[1:] != x.shape:
            raise InvalidParameterError(
                f"reference images {tuple(references.shape[1:])} do not match {tuple(x.shape)}"
            )
        self.refs = to_device(references.to(dtype=x.dtype), x.device)
        self.positions = positions
        self.k = window

    def sample(self, ids: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        B, R = len(ids), self.refs.shape[0]
        pick = torch.randint(0, R, (B, samples), generator=generator, device=self.refs.device)
        pos = self.positions[to_device(ids, self.positions.device)]
        rows, cols = _window_index(pos, self.k)  # (B, k, 1), (B, 1, k)
        # advanced indices (B,S,1,1), (B,1,k,1), (B,1,1,k) around a channel slice
        out = self.refs[pick[:, :, None, None], :, rows[:, None], cols[:, None]]  # (B,S,k,k,C)
        return out.permute(0, 1, 4, 2, 3)  # (B, S, C, k, k)


class ConditionalSampler:
    """Gaussian over the l x l patch, inner k x k conditioned on the observed ring, with a
    dense fit stored in the statistics (the patch sizes the built-in file ships; other
    sizes go to :class:`pda.engine.stationary.StationarySampler`, see make_sampler).

    Conditioning (docs/algorithm.md §3, paper eq. for p(x_w | x_hat_w)):
        mean = mu_i + S_io S_oo^-1 (x_o - mu_o),  cov = S_ii - S_io S_oo^-1 S_oi.
    Assumption 2 (statistics independent of position) means the matrices and the
    Cholesky factor are computed once per *geometry*: the interior one, and one per
    distinct way the ring is clipped by the image border, never per window. A call then
    costs two batched matmuls per geometry present among its windows.
    """

    deterministic = False
    JITTER = RING_JITTER

    def __init__(
        self, x: torch.Tensor, window: int, padding: int, positions: torch.Tensor,
        stats: SamplerStats,
    ) -> None:
        if padding < 0:
            raise InvalidParameterError(f"padding must be >= 0, got {padding}", field="padding")
        C, H, W = x.shape
        k, p = window, padding
        l_ = k + 2 * p
        self.k, self.p, self.l = k, p, l_
        self.x = x
        self.positions = positions
        self.stats = stats
        # pad so every l x l patch can be gathered; the clipped ring is masked out below
        self.x_pad = torch.nn.functional.pad(x, (p, p, p, p))  # (C, H+2p, W+2p)
        keys, geometry = torch.unique(border_clips(positions, k, p, H, W), dim=0,
                                      return_inverse=True)
        self._geometry = geometry  # (n_w,) geometry id per window, on the CPU
        self.geometry = geometry.to(x.device)
        grid = np.arange(l_ * l_).reshape(l_, l_)
        self.inner = torch.as_tensor(grid[p : p + k, p : p + k].ravel(), device=x.device)
        # factors live in the process cache (pda.engine.cache), keyed by the statistics'
        # content, so the next job of this window and padding reuses them
        self._factors = []
        for key in keys.tolist():
            clip = tuple(int(v) for v in key)
            host = cached(("dense", stats.key, k, p, clip, str(x.dtype)),
                          lambda clip=clip: self._factorise(clip, grid), disk=True)
            self._factors.append(tuple(to_device(t, x.device) for t in host))

    @property
    def geometries(self) -> int:
        return len(self._factors)

    def _factorise(self, clip: tuple[int, int, int, int], grid: np.ndarray):
        """(o, A, b, chol) for one border geometry, on the CPU; A and chol (C, ., .)."""
        top, bottom, left, right = clip
        p, k, l_ = self.p, self.k, self.l
        observed = np.ones((l_, l_), dtype=bool)
        observed[p : p + k, p : p + k] = False
        observed[:top, :] = False
        observed[l_ - bottom :, :] = False
        observed[:, :left] = False
        observed[:, l_ - right :] = False
        o = torch.as_tensor(grid[observed])
        i = torch.as_tensor(grid[p : p + k, p : p + k].ravel())
        mu, cov = (torch.from_numpy(a) for a in self.stats.gaussian(l_))  # float64
        C, n_i, n_o = mu.shape[0], len(i), len(o)
        dt = self.x.dtype
        A = torch.zeros((C, n_i, n_o), dtype=dt)
        b = torch.empty((C, n_i), dtype=dt)
        chol = torch.empty((C, n_i, n_i), dtype=dt)
        eye_i, eye_o = (torch.eye(n, dtype=cov.dtype) for n in (n_i, n_o))
        for ch in range(C):  # one channel at a time: the float64 working set stays small
            S = cov[ch]
            cond = S[i[:, None], i]  # (n_i, n_i), a copy
            b64 = mu[ch, i].clone()
            if n_o:
                # S_io S_oo^-1 = (L^-T L^-1 S_oi)^T with S_oo = L L^T: the same matrices as
                # a general solve, a third of the CPU time
                L = torch.linalg.cholesky(S[o[:, None], o] + self.JITTER * eye_o)
                B = torch.linalg.solve_triangular(L, S[o[:, None], i], upper=False)
                A64 = torch.linalg.solve_triangular(L.mT, B, upper=True).mT  # (n_i, n_o)
                cond.addmm_(B.mT, B, alpha=-1)  # S_ii - S_io S_oo^-1 S_oi
                b64 -= A64 @ mu[ch, o]
                A[ch] = A64
                del L, B, A64
            cond = cond.add_(cond.mT.clone()).mul_(0.5).add_(eye_i, alpha=self.JITTER)
            chol[ch] = torch.linalg.cholesky(cond)
            b[ch] = b64
            del cond
        return o, A, b, chol

    def _groups(self, ids: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
        """Windows of ``ids`` per geometry: (geometry, positions in ids or None for all)."""
        geo = self._geometry[ids.cpu()]
        uniq = torch.unique(geo).tolist()
        if len(uniq) == 1:
            return [(uniq[0], None)]
        return [(g, to_device((geo == g).nonzero().squeeze(1), self.x.device)) for g in uniq]

    def _ring(self, ids: torch.Tensor, g: int) -> torch.Tensor:
        """Observed ring values of windows ``ids`` (device ids, all of geometry g):
        (C, B, n_o)."""
        l_ = self.l
        o = self._factors[g][0]
        pos = self.positions[ids]  # (B, 2) = the l x l patch's corner in padded coordinates
        rows = pos[:, 0:1] + torch.div(o, l_, rounding_mode="floor")  # (B, n_o)
        cols = pos[:, 1:2] + o % l_  # (B, n_o)
        return self.x_pad[:, rows, cols]  # (C, B, n_o)

    def _mean(self, ids: torch.Tensor, g: int) -> torch.Tensor:
        """mu_i + S_io S_oo^-1 (x_o - mu_o) for device ids of geometry g: (C, B, n_i)."""
        _, A, b, _ = self._factors[g]
        return torch.baddbmm(b[:, None, :], self._ring(ids, g), A.transpose(1, 2))

    def conditional_mean(self, ids: torch.Tensor) -> torch.Tensor:
        """E[x_w | ring] for windows ``ids``: (B, C, k*k), before noise and clipping."""
        C = self.x.shape[0]
        ids_d = to_device(ids, self.x.device)
        mean = torch.empty(C, len(ids), self.k * self.k, dtype=self.x.dtype, device=self.x.device)
        for g, sel in self._groups(ids):
            if sel is None:
                mean = self._mean(ids_d, g)
            else:
                mean[:, sel] = self._mean(ids_d[sel], g)
        return mean.transpose(0, 1)  # (B, C, k*k)

    def sample(self, ids: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        B, C, k = len(ids), self.x.shape[0], self.k
        n_i = k * k
        # all noise for the call first, in one fixed order: (B, S, C, k*k)
        z = torch.randn(
            (B, samples, C, n_i), generator=generator, device=self.x.device, dtype=self.x.dtype
        )
        ids_d = to_device(ids, self.x.device)
        out = torch.empty_like(z)
        for g, sel in self._groups(ids):
            chol = self._factors[g][3]  # (C, n_i, n_i)
            mean = self._mean(ids_d if sel is None else ids_d[sel], g)  # (C, Bg, n_i)
            zg = z if sel is None else z[sel]  # (Bg, S, C, n_i)
            Bg = zg.shape[0]
            zc = zg.permute(2, 0, 1, 3).reshape(C, Bg * samples, n_i)  # (C, Bg*S, n_i)
            # x = mean + L z, batched over channels
            draw = torch.bmm(zc, chol.transpose(1, 2)).view(C, Bg, samples, n_i)
            draw = draw.add_(mean[:, :, None]).permute(1, 2, 0, 3)  # (Bg, S, C, n_i)
            if sel is None:
                out = draw
            else:
                out[sel] = draw
        return out.clamp(0.0, 1.0).reshape(B, samples, C, k, k)  # (B, S, C, k, k)


def reference_tensor(stats: SamplerStats, height: int, width: int) -> torch.Tensor:
    """The reference images resized to the model input: (R, C, H, W) float in [0, 1]."""
    refs = torch.from_numpy(stats.images).permute(0, 3, 1, 2).float() / 255.0  # (R, C, s, s)
    if refs.shape[-2:] != (height, width):
        side = max(height, width)
        refs = torch.nn.functional.interpolate(
            refs, size=(side, side), mode="bilinear", antialias=True, align_corners=False
        )
        top, left = (side - height) // 2, (side - width) // 2
        refs = refs[:, :, top : top + height, left : left + width]
    return refs.clamp(0, 1).contiguous()


def make_sampler(
    name: str, x: torch.Tensor, window: int, positions: torch.Tensor, stats: SamplerStats,
    *, padding: int = 2, fill: tuple[float, ...] | None = None,
) -> Sampler:
    """Build the sampler ``name`` for image ``x`` (C, H, W) and windows ``positions``.

    A set-up that runs out of memory raises :class:`SamplerMemoryError` (deterministic:
    the same job fails the same way again; :mod:`pda.costs` refuses such jobs at
    submit where it can)."""
    try:
        return _make(name, x, window, positions, stats, padding=padding, fill=fill)
    except MemoryError as exc:  # numpy's _ArrayMemoryError is one
        raise _out_of_memory(name, window, padding, exc) from None
    except RuntimeError as exc:  # torch's allocators (CPU, CUDA) raise these
        if "can't allocate memory" in str(exc) or isinstance(exc, torch.OutOfMemoryError):
            raise _out_of_memory(name, window, padding, exc) from None
        raise


def _out_of_memory(name: str, window: int, padding: int, exc: BaseException
                   ) -> SamplerMemoryError:
    return SamplerMemoryError(
        f"the {name} sampler's set-up for window {window}, padding {padding} ran out of "
        f"memory ({str(exc).splitlines()[0][:200]}); use a smaller window or padding, or "
        "sampler=marginal")


def conditional_sampler(x: torch.Tensor, window: int, padding: int, positions: torch.Tensor,
                        stats: SamplerStats) -> ConditionalSampler | StationarySampler:
    """The conditional sampler: the stored dense fit of this patch size where the
    statistics hold one (default 32 + 2 x 2 = 36, paper 10 + 2 x 2 = 14: their maps are
    the ones the faithfulness studies measured) and its factorisations fit the set-up
    target (pda.costs: the API's estimate makes the same choice), else the stationary
    model, which costs seconds and megabytes where a dense fit costs minutes and
    gigabytes (docs/algorithm.md §3)."""
    if padding < 0:
        raise InvalidParameterError(f"padding must be >= 0, got {padding}", field="padding")
    C, H, W = x.shape
    clips = border_clips(positions, window, padding, H, W)
    if stats.has_gaussian(window + 2 * padding):
        geos = [tuple(c) for c in torch.unique(clips, dim=0).tolist()]
        if dense_fits(dense_cost(window, padding, geos, samples=1)):
            return ConditionalSampler(x, window, padding, positions, stats)
    return StationarySampler(x, window, padding, positions, stats, clips)


def _make(
    name: str, x: torch.Tensor, window: int, positions: torch.Tensor, stats: SamplerStats,
    *, padding: int, fill: tuple[float, ...] | None,
) -> Sampler:
    if name == "conditional":
        return conditional_sampler(x, window, padding, positions, stats)
    if name == "marginal":
        return MarginalSampler(x, window, positions, reference_tensor(stats, *x.shape[1:]))
    if name == "constant":
        fill_t = torch.as_tensor(stats.mean if fill is None else fill, dtype=x.dtype)
        return ConstantSampler(x, window, fill_t)
    raise InvalidParameterError(
        f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}", field="sampler"
    )
