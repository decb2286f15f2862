"""What a job's sampler costs a worker, torch-free: set-up time and memory from (sampler,
window, padding, stride, samples, input size), and the check that refuses at submit (the
API) or before any work (``pda explain``) a job that would not finish on the deployment's
worker (docs/algorithm.md §3, docs/performance.md "Sampler set-up by window").

The conditional sampler's cost is linear algebra per border geometry (a window whose
ring the image border cuts is one of at most (p + 1)^4 geometries) plus FFTs for the
stationary model; the model counts the flops and bytes of exactly the arrays
:mod:`pda.engine.samplers` and :mod:`pda.engine.stationary` make, with rates measured on
the 2-core reference machine (``python scripts/measure/sampler_setup.py --calibrate``).
Every sampler also holds one block of samples, 64 windows x S x 3 x k x k floats.

A worker's memory is bounded by ``WORKER_BASE_BYTES`` (the process with the default
model loaded) + ``PDA_SAMPLER_CACHE_BYTES`` (the factor cache's bound) + one job's peak:
its sampler, and its window scores spread into maps (O(windows x k^2 x targets), the
largest term of a large window at a small stride); a job whose peak does not fit
``PDA_WORKER_MEMORY_BYTES``, or whose sampler set-up would take more than
``SETUP_SECONDS_TARGET`` on the reference machine, is refused.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_PADDING, DEFAULT_WINDOW, DETERMINISTIC_SAMPLERS, PRESETS
from .errors import SamplerLimitError
from .grid import BLOCK_WINDOWS, count_windows

#: the built-in sampler statistics (pda.engine.stats loads it)
DEFAULT_STATS_PATH = Path(__file__).parent / "data" / "default_stats.npz"
#: reference images are resized to this side (pda.engine.stats); a patch cannot exceed it
REFERENCE_SIDE = 256
#: reference images in the built-in statistics (pda/data/reference)
REFERENCE_IMAGES = 8
CHANNELS = 3
#: the issue's target: any accepted window prepares within this on 2 cores
SETUP_SECONDS_TARGET = 10.0
#: effective rates on the reference machine (2 vCPUs of an AMD EPYC): float64 dense
#: linear algebra in flops per second, complex FFTs in seconds per point x log2(points).
#: Bare kernels ran at 10.6-21 GFLOP/s and 0.65-1.2 ns in `--calibrate` runs (load 2.7-5);
#: these lower rates also cover the set-ups' gathers and copies, and predict the set-up
#: times of docs/performance.md ("Sampler set-up by window") within a factor of two
LINALG_FLOPS = 10e9
FFT_SECONDS = 1.2e-9
#: bytes of FFT buffers the stationary sampler transforms at a time (pda.engine.stationary)
SAMPLER_WORK_BYTES = 64 * 1024 * 1024
#: what the process's RSS holds beyond the arrays counted here: the allocator keeps freed
#: blocks, FFT and BLAS keep work buffers (measured: up to 60 MB over the count)
RSS_SLACK_BYTES = 96 * 1024 * 1024
#: RSS of a worker with the default model loaded, its backend graph and the built-in
#: statistics, without a sampler's factors (a CLI job measured 942 MB with 144 MB of them)
WORKER_BASE_BYTES = 1 << 30


def preset_patch_sizes() -> tuple[int, ...]:
    """Conditional patch sides l = k + 2p of the default window and of every preset
    (default 32 + 2 x 2 = 36, paper 10 + 2 x 2 = 14): the fits the built-in file ships."""
    return tuple(sorted({
        p.get("window", DEFAULT_WINDOW) + 2 * p.get("padding", DEFAULT_PADDING)
        for p in ({}, *PRESETS.values())}))


#: patch sizes with a stored dense fit (derived, so a new default or preset cannot be missed)
DEFAULT_PATCH_SIZES = preset_patch_sizes()


def stored_patch_sizes(path: str | Path | None = None) -> tuple[int, ...]:
    """Patch sides a statistics file stores a dense fit for (``gauss_<l>_mu``), read from
    its zip directory alone; the built-in file's when ``path`` is None or unreadable (the
    worker then fails the job with the file's own error)."""
    p = Path(path) if path else DEFAULT_STATS_PATH
    try:
        return _stored(str(p), p.stat().st_mtime_ns)
    except (OSError, zipfile.BadZipFile, ValueError):
        return DEFAULT_PATCH_SIZES


@lru_cache(maxsize=8)
def _stored(path: str, _mtime: int) -> tuple[int, ...]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return tuple(sorted(int(n.split("_")[1]) for n in names
                        if n.startswith("gauss_") and n.endswith("_mu.npy")))


@dataclass(frozen=True)
class SamplerCost:
    """One job's sampler: ``path`` (dense, stationary, marginal, constant), its border
    geometries, set-up seconds on the reference machine, and bytes: ``held`` for the
    sweep (factors), ``setup`` at the set-up's peak, ``call`` one block's working set,
    ``maps`` the window scores spread into maps at the end (the sampler still held);
    ``draw_seconds`` per sample drawn."""

    path: str
    geometries: int
    setup_seconds: float
    held_bytes: int
    setup_bytes: int
    call_bytes: int
    draw_seconds: float
    maps_bytes: int = 0

    @property
    def peak_bytes(self) -> int:
        """The job's peak beside the worker's base and cache."""
        return (max(self.setup_bytes, self.held_bytes + self.call_bytes,
                    self.held_bytes + self.maps_bytes) + RSS_SLACK_BYTES)


def maps_bytes(input_size: tuple[int, int], window: int, stride: int, targets: int) -> int:
    """Spreading window scores into maps (pda.engine.geometry.windows_to_pixels): each
    window's score of each target, and a count, written over its k x k pixels before
    ``fold`` sums them, in float64 (window 150 at stride 1, 3 targets: 4 GB)."""
    H, W = input_size
    return count_windows(H, W, window, stride) * window * window * (targets + 1) * 8


def _fft(points: float) -> float:
    return FFT_SECONDS * points * math.log2(max(points, 2))


def fast_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (the FFT sizes pda.engine.stationary uses)."""
    best = 1 << max(n - 1, 0).bit_length()
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            v = p3
            while v < n:
                v *= 5
            best = min(best, v)
            p3 *= 3
        p2 *= 2
    return best


def clip_patterns(size: int, window: int, stride: int, padding: int) -> set[tuple[int, int]]:
    """Distinct (before, after) ring cuts along one axis over the window positions."""
    out = set()
    for r in range(0, size - window + 1, stride):
        out.add((max(0, padding - r), max(0, r + window + padding - size)))
    return out


def geometries(input_size: tuple[int, int], window: int, stride: int, padding: int
               ) -> list[tuple[int, int, int, int]]:
    """Every border geometry (top, bottom, left, right cut) of a sweep."""
    H, W = input_size
    rows = clip_patterns(H, window, stride, padding)
    cols = clip_patterns(W, window, stride, padding)
    return [(t, b, lf, rt) for t, b in sorted(rows) for lf, rt in sorted(cols)]


def missing(patch: int, clip: tuple[int, int, int, int]) -> int:
    """Ring cells one geometry's border cuts off (all of them lie in the ring)."""
    t, b, lf, rt = clip
    return (t + b) * patch + (lf + rt) * (patch - t - b)


def block_bytes(sampler: str, window: int, samples: int) -> int:
    """One block of samples as the sweep holds it (drawn, and queued for batches)."""
    if sampler in DETERMINISTIC_SAMPLERS:
        return 0  # one patch, expanded
    return 2 * BLOCK_WINDOWS * samples * CHANNELS * window * window * 4


def dense_cost(window: int, padding: int, geos: list, samples: int) -> SamplerCost:
    """The stored-fit path (ConditionalSampler): per geometry, A = S_io S_oo^-1 through
    the Cholesky factor of S_oo, S_ii - A S_oi and its Cholesky factor (float64, all
    channels at once); A and the factor kept as float32."""
    k, p = window, padding
    l_ = k + 2 * p
    n_i, ring = k * k, l_ * l_ - k * k
    flops = held = peak_tmp = 0
    for g in geos:
        n_o = ring - missing(l_, g)
        # Cholesky of S_oo, two triangular solves, S_io S_oo^-1 S_oi, Cholesky of the rest
        flops += CHANNELS * (n_o ** 3 / 3 + 2 * n_o ** 2 * n_i + 2 * n_i ** 2 * n_o
                             + n_i ** 3 / 3)
        held += CHANNELS * (n_i * n_o + n_i * n_i + n_i) * 4 + n_o * 8
        peak_tmp = max(peak_tmp, CHANNELS * 8 * (4 * n_i * n_i + 2 * n_o * n_o
                                                 + 3 * n_o * n_i))
    call = block_bytes("conditional", k, samples) + BLOCK_WINDOWS * samples * CHANNELS * n_i * 8
    draw = 2 * CHANNELS * n_i * n_i / LINALG_FLOPS  # L z per sample
    return SamplerCost("dense", len(geos), flops / LINALG_FLOPS, held, held + peak_tmp,
                       call, draw)


def stationary_cost(window: int, padding: int, geos: list, samples: int,
                    reference: tuple[int, int] = (REFERENCE_IMAGES, REFERENCE_SIDE)
                    ) -> SamplerCost:
    """The stationary path (pda.engine.stationary): the model's spectra (FFTs of the
    reference images on the m x m draw torus), P = S_oo^-1 over the whole ring, and a
    Cholesky factor of P_mm per geometry that cuts ring cells off."""
    k, p = window, padding
    l_ = k + 2 * p
    R, N = reference
    m, mc = fast_size(l_ + N - 1), fast_size(2 * l_ - 1)
    n_o = l_ * l_ - k * k
    acf = _fft(CHANNELS * R * fast_size(2 * N - 1) ** 2) * 2  # once per statistics file
    model = _fft(CHANNELS * R * m * m) + _fft(CHANNELS * mc * mc)
    flops = CHANNELS * n_o ** 3  # Cholesky (n^3 / 3) and cholesky_inverse (2 n^3 / 3)
    held = CHANNELS * (m * m * 4 + mc * (mc // 2 + 1) * 4 + (2 * l_ - 1) ** 2 * 8)
    held += CHANNELS * n_o * n_o * 8 + CHANNELS * (2 * N - 1) ** 2 * 8
    peak_tmp = max(CHANNELS * m * m * 24 + R * CHANNELS * N * N * 8,
                   3 * CHANNELS * n_o * n_o * 8)
    for g in geos:
        n_m = missing(l_, g)
        flops += CHANNELS * (n_m ** 3 / 3 + n_o * n_m)
        held += CHANNELS * n_m * n_m * 8
        peak_tmp = max(peak_tmp, CHANNELS * (n_o * n_m + 2 * n_m * n_m) * 8)
    seconds = acf + model + flops / LINALG_FLOPS
    n = BLOCK_WINDOWS * samples  # draws per block call
    # the prior draws and their copy per geometry, the ring residuals and weights
    # (float64), and one step of FFT buffers (at least one field's)
    call = (block_bytes("conditional", k, samples) + n * CHANNELS * l_ * l_ * 4 * 2
            + n * CHANNELS * n_o * 8 * 3
            + max(SAMPLER_WORK_BYTES, CHANNELS * m * m * 8 * 3) * 2)
    draw = (_fft(CHANNELS * m * m) / 2 + _fft(CHANNELS * mc * mc)
            + 4 * CHANNELS * n_o * n_o / LINALG_FLOPS)
    return SamplerCost("stationary", len(geos), seconds, held, held + peak_tmp, call, draw)


def sampler_cost(sampler: str, window: int, padding: int, stride: int, samples: int,
                 input_size: tuple[int, int], targets: int = 0,
                 dense_sizes: tuple[int, ...] = DEFAULT_PATCH_SIZES) -> SamplerCost:
    """The cost of one job's sampler on the reference machine (see the module docstring),
    with its maps of ``targets`` targets. ``dense_sizes``: patch sides with a stored fit
    (the built-in file's)."""
    H, W = input_size
    maps = maps_bytes(input_size, window, stride, targets) if targets else 0
    if sampler == "constant":
        cost = SamplerCost("constant", 0, 0.0, 0, 0, 0, 0.0)
    elif sampler == "marginal":  # the reference images at the input size, float32
        refs = REFERENCE_IMAGES * CHANNELS * max(H, W) ** 2 * 4
        cost = SamplerCost("marginal", 0, 0.0, refs, 2 * refs,
                           block_bytes(sampler, window, samples), 0.0)
    else:
        geos = geometries(input_size, window, stride, padding)
        cost = stationary_cost(window, padding, geos, samples)
        if window + 2 * padding in dense_sizes:
            dense = dense_cost(window, padding, geos, samples)
            if dense_fits(dense):
                cost = dense
    return replace(cost, maps_bytes=maps)


def dense_fits(cost: SamplerCost) -> bool:
    """Whether a stored fit is used: its per-geometry factorisations (O(k^6) for a k x k
    window) within the set-up target; else the stationary model serves the patch size
    (:func:`pda.engine.samplers.conditional_sampler` asks the same question)."""
    return cost.setup_seconds <= SETUP_SECONDS_TARGET


def check_job(params: Any, input_size: tuple[int, int], *, memory_bytes: int,
              cache_bytes: int, stats_path: str | Path | None = None) -> SamplerCost:
    """Refuse (:class:`SamplerLimitError`, 422) a job that cannot finish on the
    deployment's worker: a conditional patch larger than the reference images, a sampler
    set-up over ``SETUP_SECONDS_TARGET``, or a peak (sampler and maps) over
    ``memory_bytes`` - base - cache. The message names the limit and what fits instead.
    ``stats_path``: the deployment's statistics file (``PDA_SAMPLER_STATS``; None: the
    built-in), whose stored fits decide where the dense path runs."""
    from .params import target_count  # pda.params is the parameters' home; no cycle

    sampler, k, p = params.sampler, params.window, params.padding
    s, S, T = params.stride, params.samples, target_count(params)
    if sampler == "conditional" and k + 2 * p > REFERENCE_SIDE:
        raise SamplerLimitError(
            f"window {k} + 2 x padding {p} = {k + 2 * p} exceeds the {REFERENCE_SIDE} px "
            f"reference images the conditional sampler is fitted on; use window + 2 x "
            f"padding <= {REFERENCE_SIDE}, or sampler=marginal", field="padding")
    budget = memory_bytes - WORKER_BASE_BYTES - cache_bytes
    dense = stored_patch_sizes(stats_path)

    def cost_of(window: int = k, padding: int = p, stride: int = s, samples: int = S,
                kind: str = sampler) -> SamplerCost:
        return sampler_cost(kind, window, padding, stride, samples, input_size, T, dense)

    def fits(**change: int) -> bool:
        c = cost_of(**change)
        return c.setup_seconds <= SETUP_SECONDS_TARGET and c.peak_bytes <= budget

    cost = cost_of()
    if fits():
        return cost
    slow = cost.setup_seconds > SETUP_SECONDS_TARGET
    over = (f"its sampler's set-up needs about {cost.setup_seconds:.0f} s on 2 cores (the "
            f"target is {SETUP_SECONDS_TARGET:.0f} s)" if slow
            else f"it needs about {_gib(cost.peak_bytes)} of worker memory (sampler and "
            f"maps), over the {_gib(max(budget, 0))} a worker of {_gib(memory_bytes)} "
            f"(PDA_WORKER_MEMORY_BYTES) has for it")
    instead = []
    if sampler == "conditional":
        p_ok = next((q for q in range(p - 1, -1, -1) if fits(padding=q)), None)
        if p_ok is not None:
            instead.append(f"padding <= {p_ok}")
    k_ok = next((w for w in range(k - 1, 0, -1) if fits(window=w)), None)
    if k_ok is not None:
        instead.append(f"window <= {k_ok}")
    if not slow:
        s_ok = next((n for n in range(s + 1, max(input_size) + 1) if fits(stride=n)), None)
        if s_ok is not None:
            instead.append(f"stride >= {s_ok}")
        n_ok = next((n for n in range(S - 1, 0, -1) if fits(samples=n)), None)
        if n_ok is not None:
            instead.append(f"samples <= {n_ok}")
    if sampler == "conditional" and fits(kind="marginal"):
        instead.append("sampler=marginal")
    raise SamplerLimitError(
        f"the {sampler} sampler with window {k}, padding {p}, stride {s} and {S} "
        f"sample{'s' if S > 1 else ''} "
        f"cannot run on this deployment's workers: {over}; use {', or '.join(instead)}",
        field="window", limit_bytes=memory_bytes, estimated_bytes=cost.peak_bytes,
        estimated_setup_seconds=round(cost.setup_seconds, 1))


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
