"""Sampler statistics: a reference image set, its mean colour and Gaussian patch fits.

All statistics live in pixel space (RGB in [0, 1]) so one file serves every model
(docs/algorithm.md §3). A statistics file (``.npz``) holds:

- ``images``: (R, 256, 256, 3) uint8, the reference set (shorter side resized to 256,
  centre crop), used by the marginal sampler and to fit Gaussians;
- ``mean``: (3,) float, the reference mean colour (the constant sampler's default fill);
- ``gauss_<l>_mu`` (3, l*l) and ``gauss_<l>_cov_triu`` (3, l*l*(l*l+1)/2): per-channel
  Gaussian fits of l x l patches, as the authors fit them (one Gaussian per colour
  channel), the symmetric covariance stored as its upper triangle (row-major) to halve
  the file; older files hold the full ``gauss_<l>_cov`` (3, l*l, l*l), also read.
  Fits for other patch sizes are computed on demand from ``images`` (scripts, ``save``);
  the conditional sampler uses a stored fit where there is one, and the stationary model
  of :mod:`pda.engine.stationary` (fitted from ``images`` in well under a second, for
  every patch size at once) where there is none, so no request fits a dense Gaussian.

``pda fit-sampler DIR --out FILE`` writes one; the built-in default is fitted from the
freely licensed photos in ``pda/data/reference`` by
``pda fit-sampler pda/data/reference --out pda/data/default_stats.npz``, with the patch
sizes of the default window and of every preset (:data:`DEFAULT_PATCH_SIZES`), so
neither ever fits at request time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..costs import DEFAULT_PATCH_SIZES, DEFAULT_STATS_PATH, REFERENCE_SIDE, fast_size
from ..errors import InvalidImageError, SamplerStatsError
from .cache import cached

#: random patches per Gaussian fit (the authors used 20000)
FIT_PATCHES = 20_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}



#: tells apart the keys of statistics whose fits were set by hand
_set_counter = itertools.count(1)


class SamplerStats:
    """Reference images plus Gaussian fits; safe to share between threads.

    ``key`` names the content (a hash of the file, or of the images): the process cache
    of sampler factors (:mod:`pda.engine.cache`) is keyed by it, so two objects read from
    the same file share their factors and a changed file never meets stale ones."""

    def __init__(self, images: np.ndarray, mean: np.ndarray | None = None, source: str = "",
                 key: str | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise SamplerStatsError(
                f"reference images must be (R, H, W, 3) uint8, got {images.shape} {images.dtype}"
            )
        if len(images) < 2:
            raise SamplerStatsError("sampler statistics need at least 2 reference images")
        self.images = images
        self.mean = (
            np.asarray(mean, dtype=np.float64)
            if mean is not None
            else images.reshape(-1, 3).mean(axis=0) / 255.0
        )
        self.source = source
        self.key = key or _digest(self.images.tobytes(), self.mean.tobytes())
        # the fits the file holds (or set_gaussian gave): the dense conditional sampler's
        self._gauss: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._acf: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    # -- Gaussian fits ---------------------------------------------------------------
    def has_gaussian(self, patch: int) -> bool:
        """True when a fit for l x l patches is stored (the file's, or set_gaussian's)."""
        return patch in self._gauss

    @property
    def stored_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self._gauss))

    def gaussian(self, patch: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean (3, l*l) and covariance (3, l*l, l*l) of l x l patches: the
        stored fit, or one fitted now (kept in the bounded process cache, not here)."""
        with self._lock:
            if patch in self._gauss:
                return self._gauss[patch]
        return cached(("gauss", self.key, patch), lambda: fit_gaussian(self.images, patch),
                      disk=True)

    def autocovariance(self) -> tuple[np.ndarray, np.ndarray]:
        """The reference images' per-channel mean and autocovariance at every offset
        (:func:`autocovariance`), computed once (6 MB at 256 px)."""
        with self._lock:
            if self._acf is None:
                self._acf = autocovariance(self.images)
            return self._acf

    def set_gaussian(self, patch: int, mu: np.ndarray, cov: np.ndarray) -> None:
        """Use a given Gaussian for l x l patches (tests, or fits made elsewhere)."""
        n = patch * patch
        if mu.shape != (3, n) or cov.shape != (3, n, n):
            raise SamplerStatsError(f"Gaussian for patch {patch} must be (3, {n}), (3, {n}, {n})")
        with self._lock:
            self._gauss[patch] = (np.asarray(mu, np.float64), np.asarray(cov, np.float64))
            # factors cached under the old key were made from another Gaussian
            self.key = f"{self.key.split(':')[0]}:set{next(_set_counter)}"

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str | Path, patch_sizes: Iterable[int] = DEFAULT_PATCH_SIZES) -> None:
        arrays: dict[str, np.ndarray] = {"images": self.images, "mean": self.mean}
        for l_ in patch_sizes:
            mu, cov = self.gaussian(l_)
            rows, cols = np.triu_indices(l_ * l_)
            arrays[f"gauss_{l_}_mu"] = mu.astype(np.float32)
            arrays[f"gauss_{l_}_cov_triu"] = cov[:, rows, cols].astype(np.float32)
        arrays["meta"] = np.array(json.dumps({"source": self.source}))
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SamplerStats:
        path = Path(path)
        if not path.is_file():
            raise SamplerStatsError(f"sampler statistics file not found: {path}")
        try:
            key = _digest(path.read_bytes())
            with np.load(path, allow_pickle=False) as data:
                stats = cls(data["images"], data["mean"], source=str(path), key=key)
                for name in data.files:
                    if name.startswith("gauss_") and name.endswith("_mu"):
                        l_ = int(name.split("_")[1])
                        stats._gauss[l_] = (data[name].astype(np.float64),
                                            _covariance(data, l_))
        except SamplerStatsError:
            raise
        except Exception as exc:  # zip, key or dtype errors all mean "not our file"
            raise SamplerStatsError(f"cannot read sampler statistics {path}: {exc}") from exc
        return stats


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:32]


def _covariance(data: np.lib.npyio.NpzFile, patch: int) -> np.ndarray:
    """The (3, l*l, l*l) float64 covariance of a file's l x l fit, full or packed."""
    if f"gauss_{patch}_cov" in data.files:
        return data[f"gauss_{patch}_cov"].astype(np.float64)
    n = patch * patch
    packed = data[f"gauss_{patch}_cov_triu"]  # (3, n(n+1)/2)
    rows, cols = np.triu_indices(n)
    cov = np.zeros((packed.shape[0], n, n))
    cov[:, rows, cols] = packed
    cov[:, cols, rows] = packed  # the mirror image; the diagonal is written twice, equal
    return cov


def fit_gaussian(
    images: np.ndarray, patch: int, n_patches: int = FIT_PATCHES, seed: int = 0,
    chunk: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit one Gaussian per channel to random l x l patches of ``images`` (R, H, W, 3).

    Patches are gathered ``chunk`` at a time and their moments accumulated, so memory
    stays small even for large patches (l = 36 is 1296 dimensions per channel).
    """
    R, H, W, C = images.shape
    if patch > min(H, W):
        raise SamplerStatsError(f"patch size {patch} exceeds the reference images ({H}x{W})")
    rng = np.random.default_rng(seed)
    r = rng.integers(0, R, n_patches)
    i = rng.integers(0, H - patch + 1, n_patches)
    j = rng.integers(0, W - patch + 1, n_patches)
    offs = np.arange(patch)
    d = patch * patch
    total = np.zeros((C, d))
    outer = np.zeros((C, d, d))
    for s in range(0, n_patches, chunk):
        sl = slice(s, s + chunk)
        rows = (i[sl, None] + offs)[:, :, None]  # (P, l, 1)
        cols = (j[sl, None] + offs)[:, None, :]  # (P, 1, l)
        p = images[r[sl, None, None], rows, cols].astype(np.float64) / 255.0  # (P, l, l, C)
        p = p.transpose(3, 0, 1, 2).reshape(C, -1, d)  # (C, P, l*l)
        total += p.sum(axis=1)
        outer += p.transpose(0, 2, 1) @ p  # (C, l*l, l*l), BLAS
    mu = total / n_patches  # (C, l*l)
    cov = (outer - n_patches * mu[:, :, None] * mu[:, None, :]) / (n_patches - 1)
    return mu, cov


def load_reference_images(directory: str | Path, side: int = REFERENCE_SIDE) -> np.ndarray:
    """Every image under ``directory``: shorter side to ``side``, centre crop, uint8."""
    from PIL import Image, ImageOps

    directory = Path(directory)
    if not directory.is_dir():
        raise SamplerStatsError(f"not a directory: {directory}")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise SamplerStatsError(
            f"{directory} holds {len(files)} image(s); fitting needs at least 2 "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                out.append(np.asarray(ImageOps.fit(im, (side, side), Image.BICUBIC)))
        except Exception as exc:
            raise InvalidImageError(f"cannot read reference image {f}: {exc}") from exc
    return np.stack(out)  # (R, side, side, 3)


def fit_stats(directory: str | Path) -> SamplerStats:
    return SamplerStats(load_reference_images(directory), source=str(directory))


_cache: dict[str, SamplerStats] = {}
_cache_lock = threading.Lock()


def get_stats(path: str | Path | None = None) -> SamplerStats:
    """The statistics at ``path`` (default: the built-in set), loaded once per process."""
    key = str(path or DEFAULT_STATS_PATH)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = SamplerStats.load(key)
        return _cache[key]


def autocovariance(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean (C,) and autocovariance (C, 2H - 1, 2W - 1) of ``images``
    (R, H, W, C) uint8, offset (dy, dx) at index (dy + H - 1, dx + W - 1): the sum of the
    products of every pixel pair at that offset, over R H W."""
    R, H, W, C = images.shape
    x = images.astype(np.float64) / 255.0  # (R, H, W, C)
    mean = x.reshape(-1, C).mean(axis=0)  # (C,)
    x = (x - mean).transpose(3, 0, 1, 2)  # (C, R, H, W)
    sh, sw = fast_size(2 * H - 1), fast_size(2 * W - 1)
    f = np.fft.rfft2(x, s=(sh, sw))  # (C, R, sh, sw//2+1)
    power = (f.real ** 2 + f.imag ** 2).sum(axis=1)  # (C, sh, sw//2+1)
    full = np.fft.irfft2(power, s=(sh, sw))  # (C, sh, sw): products summed per offset
    dy, dx = np.arange(-(H - 1), H), np.arange(-(W - 1), W)
    return mean, full[:, dy[:, None] % sh, dx[None, :] % sw] / (R * H * W)
