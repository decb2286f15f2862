"""The conditional sampler for patch sizes without a dense fit: a stationary Gaussian
(docs/algorithm.md §3, "Large windows").

The dense fit (:func:`pda.engine.stats.fit_gaussian`) estimates an (l*l, l*l) covariance
per channel from 20,000 patches and factorises it per border geometry: O(l^4) memory and
O(l^6) time, 38.7 GiB at l = 204. The paper's assumption 2 (statistics do not depend on
the position) says more than the dense fit uses: the covariance of two pixels depends
only on their offset. Here that offset-only covariance is

    S(a, b) = c(a - b),  c(d) = the reference images' autocovariance at offset d

per colour channel, estimated from every pixel pair of the reference images at once and
divided by the image area (the "biased" estimator: its spectrum is a sum of
periodograms, so S is positive semi-definite by construction, which the per-offset
average is not). Sampling is exact for this S, in O(l^2 log l) per draw:

- **prior draw**: z ~ N(0, S) over the whole l x l patch by circulant embedding: on an
  m x m torus with m >= l + N - 1 (N the reference side), c wraps onto no offset a patch
  holds, and the torus's spectrum is the periodogram at m frequencies, never negative;
  one complex FFT gives two draws (Dietrich and Newsam 1997);
- **pathwise conditioning** (Matheron's rule; Wilson et al. 2020, eq. 3): the inner
  k x k given the observed ring o is z_i + S_io (S_oo + jI)^-1 (x_o - mu - z_o - e),
  e ~ N(0, jI) the jitter's observation noise: the same distribution as the dense path's
  mean plus Cholesky noise, without the (k*k)^2 conditional covariance.
  ``S_oo^-1`` of the whole ring is computed once per (l, p); a border geometry that
  loses ring cells m uses (S_o'o')^-1 = P_o'o' - P_o'm P_mm^-1 P_mo' with P = S_oo^-1, so
  only the |m| x |m| block is factorised per geometry. S_io w is a convolution with c
  (an FFT on a torus of side >= 2l - 1).

Shapes: C channels, l patch side, k window, p padding, n_o ring cells, m torus side.
"""

from __future__ import annotations

import numpy as np
import torch

from ..costs import SAMPLER_WORK_BYTES, fast_size
from ..errors import SamplerStatsError
from .cache import cached
from .device import to_device
from .stats import SamplerStats

#: regularisation of S_oo, the dense path's too (ConditionalSampler.JITTER)
JITTER = 1e-5
#: bytes of FFT buffers per step (the cost model counts the same)
WORK_BYTES = SAMPLER_WORK_BYTES


class StationaryModel:
    """The stationary Gaussian of l x l patches: ``mean`` (C,), ``box`` (C, 2l-1, 2l-1)
    its covariance by offset, ``root`` (C, m, m) the square root of the draw torus's
    spectrum over m (so fft2(root * xi), xi complex normal, has covariance c in both its
    real and imaginary parts), ``conv`` (C, mc, mc//2+1) the box's spectrum on the
    convolution torus (float32: the convolution runs in the image's dtype)."""

    def __init__(self, images: np.ndarray, mean: np.ndarray, acf: np.ndarray, patch: int):
        R, H, W, C = images.shape
        if patch > min(H, W):
            raise SamplerStatsError(
                f"patch size {patch} exceeds the reference images ({H}x{W})")
        l_ = patch
        lag = np.arange(-(l_ - 1), l_)
        self.box = acf[:, (lag + H - 1)[:, None], (lag + W - 1)[None, :]]  # (C, 2l-1, 2l-1)
        # draw torus: the periodogram at m frequencies is the spectrum of c wrapped on
        # the torus (Poisson), and m >= l + N - 1 keeps every offset < l unwrapped
        self.m = fast_size(l_ + max(H, W) - 1)
        x = (images.astype(np.float64) / 255.0 - mean).transpose(0, 3, 1, 2)  # (R, C, H, W)
        power = np.zeros((C, self.m, self.m))
        for img in x:  # one image at a time: (C, m, m) complex is the working set
            f = np.fft.fft2(img, s=(self.m, self.m))
            power += f.real ** 2 + f.imag ** 2
        # the complex normal torch draws has parts of variance 1/2: sqrt 2 makes them 1
        self.root = (np.sqrt(2 * power / (R * H * W)) / self.m).astype(np.float32)  # (C, m, m)
        self.mc = fast_size(2 * l_ - 1)
        torus = np.zeros((C, self.mc, self.mc))
        torus[:, lag[:, None] % self.mc, lag[None, :] % self.mc] = self.box
        # (C, mc, mc//2+1); c is even, so its spectrum is real
        self.conv = np.fft.rfft2(torus).real.astype(np.float32)
        self.mean = np.asarray(mean, np.float64)
        self.patch = l_

    @property
    def nbytes(self) -> int:
        return self.box.nbytes + self.root.nbytes + self.conv.nbytes + self.mean.nbytes

    def covariance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """S between patch cells ``a`` and ``b`` (flat indices into l x l): (C, |a|, |b|)."""
        l_ = self.patch
        dy = a[:, None] // l_ - b[None, :] // l_ + l_ - 1
        dx = a[:, None] % l_ - b[None, :] % l_ + l_ - 1
        return self.box[:, dy, dx]


def ring_cells(patch: int, padding: int) -> np.ndarray:
    """Flat indices (n_o,) of the ring: the l x l patch without its inner k x k."""
    l_, p = patch, padding
    inner = np.zeros((l_, l_), dtype=bool)
    inner[p : l_ - p, p : l_ - p] = True
    return np.flatnonzero(~inner)


def missing_cells(patch: int, padding: int, clip: tuple[int, int, int, int]) -> np.ndarray:
    """Positions in :func:`ring_cells` of the ring cells a border cuts off."""
    top, bottom, left, right = clip
    l_ = patch
    ring = ring_cells(patch, padding)
    r, c = ring // l_, ring % l_
    return np.flatnonzero((r < top) | (r >= l_ - bottom) | (c < left) | (c >= l_ - right))


def ring_inverse(model: StationaryModel, padding: int) -> torch.Tensor:
    """P = (S_oo + jitter I)^-1 over the whole ring: (C, n_o, n_o) float64."""
    o = ring_cells(model.patch, padding)
    S_oo = torch.from_numpy(model.covariance(o, o))
    S_oo.diagonal(dim1=1, dim2=2).add_(JITTER)
    return torch.cholesky_inverse(torch.linalg.cholesky(S_oo))


class StationarySampler:
    """The conditional sampler of a stationary Gaussian (see the module docstring).

    ``sample`` and ``conditional_mean`` behave as :class:`ConditionalSampler`'s: the
    inner k x k given the observed ring, clipped to [0, 1] (samples only)."""

    deterministic = False

    def __init__(self, x: torch.Tensor, window: int, padding: int, positions: torch.Tensor,
                 stats: SamplerStats, clips: torch.Tensor) -> None:
        C, H, W = x.shape
        k, p = window, padding
        l_ = k + 2 * p
        self.k, self.p, self.l = k, p, l_
        self.x, self.positions = x, positions
        dev = x.device
        model = cached(("stationary", stats.key, l_), lambda: _model(stats, l_))
        P = cached(("ring-inverse", stats.key, l_, p), lambda: ring_inverse(model, p),
                   disk=True)
        self.mean = to_device(torch.as_tensor(model.mean, dtype=torch.float64), dev)
        self.root = to_device(torch.as_tensor(model.root), dev)  # (C, m, m) float32
        self.conv = to_device(torch.as_tensor(model.conv, dtype=x.dtype), dev)  # (C, mc, mc//2+1)
        self.m, self.mc = model.m, model.mc
        # draws per convolution step: the padded field, its spectrum and the result
        self._step = max(1, WORK_BYTES // (C * self.mc * self.mc * 16))
        self.P = to_device(P, dev)  # (C, n_o, n_o) f64
        self.ring = torch.as_tensor(ring_cells(l_, p), device=dev)  # (n_o,)
        grid = np.arange(l_ * l_).reshape(l_, l_)
        self.inner = torch.as_tensor(grid[p : p + k, p : p + k].ravel(), device=dev)
        self.x_pad = torch.nn.functional.pad(x, (p, p, p, p))  # (C, H+2p, W+2p)
        keys, geometry = torch.unique(clips, dim=0, return_inverse=True)
        self._geometry = geometry  # (n_w,) geometry id per window, on the CPU
        # per geometry: the cut-off ring positions and the Cholesky factor of P_mm
        self._missing: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for key in keys.tolist():
            clip = tuple(int(v) for v in key)
            mi = torch.as_tensor(missing_cells(l_, p, clip))
            factor = None
            if len(mi):  # P_mm, gathered in one step (two steps copy the rows twice)
                factor = cached(("ring-missing", stats.key, l_, p, clip),
                                lambda mi=mi: torch.linalg.cholesky(P[:, mi[:, None], mi]),
                                disk=True)
            self._missing.append((torch.as_tensor(mi, device=dev),
                                  None if factor is None else to_device(factor, dev)))

    @property
    def geometries(self) -> int:
        return len(self._missing)

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` zero-mean prior draws per channel over the patch: (n, C, l*l) float32."""
        C, m, l_ = self.root.shape[0], self.m, self.l
        pairs, step = (n + 1) // 2, max(1, WORK_BYTES // (C * m * m * 8 * 3))
        z = torch.empty((2 * pairs, C, l_, l_), device=self.root.device)
        for s in range(0, pairs, step):
            q = min(step, pairs - s)
            # complex normal (real and imaginary parts N(0, 1/2); root carries the sqrt 2)
            xi = torch.randn((q, C, m, m), generator=generator, device=self.root.device,
                             dtype=torch.complex64)
            y = torch.fft.fft2(xi.mul_(self.root))[..., :l_, :l_]  # (q, C, l, l)
            z[2 * s : 2 * s + 2 * q : 2] = y.real  # the pair's two draws, side by side
            z[2 * s + 1 : 2 * s + 2 * q : 2] = y.imag
            del xi, y
        return z[:n].view(n, C, l_ * l_)  # (n, C, l*l)

    def _weights(self, resid: torch.Tensor, g: int) -> torch.Tensor:
        """S_o'o'^-1 r for residuals ``resid`` (C, n_o, n) float64 on the ring (zero where
        geometry g cuts it off): (C, n_o, n), zero at the cut-off cells."""
        mi, factor = self._missing[g]
        u = torch.bmm(self.P, resid)  # (C, n_o, n)
        if factor is not None:  # the Schur complement: P_o'o' - P_o'm P_mm^-1 P_mo'
            y = torch.cholesky_solve(u[:, mi], factor)  # (C, |m|, n)
            u = u - torch.bmm(self.P[:, :, mi], y)
        return u

    def _correct(self, w: torch.Tensor) -> torch.Tensor:
        """S_io w for ring weights ``w`` (C, n_o, q): (q, C, k*k), a convolution with c
        on the mc x mc torus, in the image's dtype (float32 keeps it within 1e-5 of
        float64 on photos: the large, cancelling part is S_oo^-1, solved in float64)."""
        C, n_o, q = w.shape
        l_, mc = self.l, self.mc
        g = torch.zeros((q, C, l_ * l_), dtype=self.x.dtype, device=w.device)
        g[:, :, self.ring] = w.permute(2, 0, 1).to(self.x.dtype)  # (q, C, n_o)
        f = torch.fft.rfft2(g.view(q, C, l_, l_), s=(mc, mc)) * self.conv  # (q, C, mc, mc//2+1)
        full = torch.fft.irfft2(f, s=(mc, mc))[..., :l_, :l_]  # (q, C, l, l)
        return full.reshape(q, C, l_ * l_)[:, :, self.inner]  # (q, C, k*k)

    def _groups(self, ids: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
        """Windows of ``ids`` per geometry: (geometry, positions in ids or None for all)."""
        geo = self._geometry[ids.cpu()]
        uniq = torch.unique(geo).tolist()
        if len(uniq) == 1:
            return [(uniq[0], None)]
        return [(g, to_device((geo == g).nonzero().squeeze(1), self.x.device)) for g in uniq]

    def _residuals(self, ids: torch.Tensor, g: int, z_o: torch.Tensor | None) -> torch.Tensor:
        """x_o - mu - z_o of windows ``ids`` (device, geometry g), zero at cut-off cells:
        (C, n_o, B * S) float64; ``z_o`` (B, S, C, n_o) or None (the mean)."""
        l_ = self.l
        pos = self.positions[ids]  # (B, 2): the patch corner in padded coordinates
        rows = pos[:, 0:1] + torch.div(self.ring, l_, rounding_mode="floor")  # (B, n_o)
        cols = pos[:, 1:2] + self.ring % l_
        r = (self.x_pad[:, rows, cols].double() - self.mean[:, None, None])  # (C, B, n_o)
        r = r.permute(1, 0, 2)[:, None]  # (B, 1, C, n_o)
        if z_o is not None:
            r = r - z_o.double()  # (B, S, C, n_o)
        r[..., self._missing[g][0]] = 0
        B, S, C, n_o = r.shape
        return r.permute(2, 3, 0, 1).reshape(C, n_o, B * S)

    def conditional_mean(self, ids: torch.Tensor) -> torch.Tensor:
        """E[x_w | ring] for windows ``ids``: (B, C, k*k), before clipping."""
        C, B = self.x.shape[0], len(ids)
        ids_d = to_device(ids, self.x.device)
        out = torch.empty((B, C, self.k * self.k), dtype=self.x.dtype, device=self.x.device)
        mean = self.mean.to(self.x.dtype)[:, None]  # (C, 1)
        for g, sel in self._groups(ids):
            w = self._weights(self._residuals(ids_d if sel is None else ids_d[sel], g, None), g)
            for s in range(0, w.shape[2], self._step):
                rows = torch.arange(s, min(s + self._step, w.shape[2]), device=self.x.device)
                out[rows if sel is None else sel[rows]] = self._correct(w[:, :, rows]) + mean
        return out

    def sample(self, ids: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        B, C, k, S, l_ = len(ids), self.x.shape[0], self.k, samples, self.l
        # every prior draw of the call first, in one fixed order: (B, S, C, l*l)
        z = self._draw(B * S, generator).view(B, S, C, l_ * l_)
        # and the ring's observation noise: S_oo carries a jitter, so the ring is taken
        # as observed with that variance; Matheron's rule then gives exactly the
        # conditional covariance S_ii - S_io (S_oo + jitter I)^-1 S_oi the dense path uses
        noise = torch.randn((B, S, C, len(self.ring)), generator=generator,
                            device=z.device, dtype=z.dtype) * JITTER ** 0.5
        ids_d = to_device(ids, self.x.device)
        out = torch.empty((B * S, C, k * k), dtype=self.x.dtype, device=self.x.device)
        mean = self.mean.to(self.x.dtype)[:, None]  # (C, 1)
        draws = torch.arange(S, device=self.x.device)
        for g, sel in self._groups(ids):
            zg = z if sel is None else z[sel]  # (Bg, S, C, l*l)
            z_o = zg[..., self.ring] + (noise if sel is None else noise[sel])  # (Bg, S, C, n_o)
            w = self._weights(self._residuals(ids_d if sel is None else ids_d[sel], g, z_o),
                              g)  # (C, n_o, Bg*S)
            zg = zg.reshape(-1, C, l_ * l_)  # (Bg*S, C, l*l)
            # the draws' rows in out: window-major, as z was drawn
            rows = (torch.arange(B * S, device=self.x.device) if sel is None
                    else (sel[:, None] * S + draws).reshape(-1))  # (Bg*S,)
            for s in range(0, len(zg), self._step):  # a bounded working set per step
                part = slice(s, s + self._step)
                out[rows[part]] = zg[part][:, :, self.inner] + self._correct(w[:, :, part]) + mean
        return out.clamp_(0.0, 1.0).view(B, S, C, k, k)  # (B, S, C, k, k)


def _model(stats: SamplerStats, patch: int) -> StationaryModel:
    mean, acf = stats.autocovariance()
    return StationaryModel(stats.images, mean, acf, patch)
