"""The prediction-difference sweep: pure tensor code around one forward function.

Shapes: C channels, H x W image, k window side, S samples per window, n_w windows,
T targets (classes or channels), B forward batch size.

``readout(batch)`` maps pixel-space images (B, C, H, W) to the quantities explained
(B, T): class probabilities (output layer), logits, or a hidden unit's mean activation.
The sweep replaces each window by S samples, averages the S readouts **first**
(pda.md section 1), then turns the average into relevance per window and spreads it over
the window's pixels (section 2).

Randomness is drawn per block of ``BLOCK_WINDOWS`` windows from a generator seeded by
(seed, block), so the result depends on the seed but not on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from ..errors import InvalidParameterError
from .device import autocast, prefers_channels_last
from .geometry import window_positions, windows_to_pixels
from .samplers import Sampler

Readout = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]

BLOCK_WINDOWS = 64
#: Laplace correction defaults: N as in the authors' code (training-set size); K defaults
#: to the number of model outputs and is passed by the caller.
DEFAULT_TRAIN_SIZE = 100_000


@dataclass
class Sweep:
    """Raw sweep output: per-window mean readouts and the reference readout."""

    base: torch.Tensor  # (T,) readout of the unmodified image
    window_means: torch.Tensor  # (n_w, T) readout averaged over the S samples
    positions: torch.Tensor  # (n_w, 2)
    forward_passes: int


def laplace(p: torch.Tensor, train_size: int, num_classes: int) -> torch.Tensor:
    """p <- (p N + 1) / (N + K): keeps log-odds finite (pda.md section 1)."""
    return (p * train_size + 1) / (train_size + num_classes)


def log2_odds(p: torch.Tensor) -> torch.Tensor:
    return torch.log2(p) - torch.log2(1 - p)


def weight_of_evidence(
    p_full: torch.Tensor, p_without: torch.Tensor, train_size: int, num_classes: int
) -> torch.Tensor:
    """WE in bits: log2 odds(c|x) - log2 odds(c|x without w); positive = evidence for c."""
    full = laplace(p_full.double(), train_size, num_classes)
    without = laplace(p_without.double(), train_size, num_classes)
    return log2_odds(full) - log2_odds(without)


def passes_per_window(sampler: Sampler, samples: int) -> int:
    return 1 if sampler.deterministic else samples


def count_passes(n_windows: int, sampler: Sampler, samples: int) -> int:
    return n_windows * passes_per_window(sampler, samples)


def run_sweep(
    readout: Readout,
    x: torch.Tensor,
    sampler: Sampler,
    *,
    window: int,
    stride: int = 1,
    samples: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    fixed_batch: bool = False,
) -> Sweep:
    """Evaluate ``readout`` on every window x sample perturbation of ``x`` (C, H, W).

    ``precision`` bf16/fp16 runs the readout under autocast (the base pass too, so the
    difference compares like with like); ``channels_last`` builds NHWC batches (default:
    what the device prefers, :func:`.device.prefers_channels_last`). Neither changes
    which samples are drawn. ``fixed_batch`` pads the base pass and the last batch to
    ``batch_size`` (padding rows are the unmodified image, their outputs dropped), so a
    compiled model sees one shape and never recompiles.
    """
    if samples < 1:
        raise InvalidParameterError(f"samples must be at least 1, got {samples}", field="samples")
    if batch_size < 1:
        raise InvalidParameterError(f"batch size must be at least 1, got {batch_size}")
    C, H, W = x.shape
    k = window
    dev = x.device
    amp = autocast(dev, precision)  # validates the precision before any work
    if channels_last is None:
        channels_last = prefers_channels_last(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    positions = window_positions(H, W, k, stride, device=dev)  # (n_w, 2)
    n_w = len(positions)
    S = passes_per_window(sampler, samples)
    total = n_w * S
    n_base = batch_size if fixed_batch else 1
    with amp:
        xb = x[None].expand(n_base, C, H, W).contiguous(memory_format=fmt)  # (n_base, C, H, W)
        base = readout(xb)[0].double()  # (T,)
    sums = torch.zeros(n_w, base.numel(), dtype=torch.float64, device=dev)  # (n_w, T)

    window_ids = torch.arange(n_w, device=dev)
    offs = torch.arange(k, device=dev)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ids (P,), patches (P, C, k, k))
    n_pending = 0
    done = 0

    def forward(n: int) -> None:
        nonlocal pending, n_pending, done
        ids = torch.cat([p[0] for p in pending]) if len(pending) > 1 else pending[0][0]
        patches = torch.cat([p[1] for p in pending]) if len(pending) > 1 else pending[0][1]
        ids, rest_ids = ids[:n], ids[n:]
        patches, rest_patches = patches[:n], patches[n:]
        pending = [(rest_ids, rest_patches)] if len(rest_ids) else []
        n_pending = len(rest_ids)
        with record_function("pda.batch"):
            # every image is x with one window replaced: one copy, one scatter
            m = batch_size if fixed_batch else n  # rows n..m-1 stay the unmodified image
            batch = torch.empty((m, C, H, W), dtype=x.dtype, device=dev, memory_format=fmt)
            batch.copy_(x.expand(m, C, H, W))  # (m, C, H, W)
            pos = positions[ids]
            rows = (pos[:, 0:1] + offs)[:, :, None]  # (n, k, 1)
            cols = (pos[:, 1:2] + offs)[:, None, :]  # (n, 1, k)
            b = torch.arange(n, device=dev)[:, None, None]
            batch[b, :, rows, cols] = patches.permute(0, 2, 3, 1)  # indexed view (n, k, k, C)
        with record_function("pda.forward"), amp:
            out = readout(batch)[:n]  # (n, T)
        with record_function("pda.accumulate"):
            sums.index_add_(0, ids, out.double())
        done += n
        if progress is not None:
            progress(done, total)

    for block, start in enumerate(range(0, n_w, BLOCK_WINDOWS)):
        stop = min(start + BLOCK_WINDOWS, n_w)
        gen = torch.Generator(device=dev).manual_seed(_block_seed(seed, block))
        # samplers get CPU ids: they group windows by geometry without a device sync
        with record_function("pda.sample"):
            patches = sampler.sample(torch.arange(start, stop), S, gen)  # (b, S, C, k, k)
        ids = window_ids[start:stop, None].expand(stop - start, S).reshape(-1)  # (b*S,)
        pending.append((ids, patches.reshape(-1, C, k, k)))
        n_pending += len(ids)
        while n_pending >= batch_size:
            forward(batch_size)
    if n_pending:
        forward(n_pending)
    return Sweep(base=base, window_means=sums / S, positions=positions, forward_passes=total)


def _block_seed(seed: int, block: int) -> int:
    # distinct, well-spread seeds per (seed, block); fits torch's 64-bit seed range
    return (seed * 1_000_003 + block * 7919 + 12345) % (2**63 - 1)


def relevance_maps(
    sweep: Sweep,
    height: int,
    width: int,
    window: int,
    stride: int,
    *,
    log_odds: bool,
    train_size: int = DEFAULT_TRAIN_SIZE,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel relevance (T, H, W) and coverage counts (H, W).

    ``log_odds`` True: weight of evidence in bits on probabilities (output layer);
    False: activation difference z(x) - E[z(x')] (logits, hidden units; no log-odds,
    unlike the authors' code, their issue #5).
    """
    base = sweep.base[None, :].expand_as(sweep.window_means)  # (n_w, T)
    if log_odds:
        if num_classes is None:
            raise ValueError("num_classes is needed for the Laplace correction")
        scores = weight_of_evidence(base, sweep.window_means, train_size, num_classes)
    else:
        scores = base - sweep.window_means
    return windows_to_pixels(scores, height, width, window, stride)
