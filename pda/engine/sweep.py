"""The prediction-difference sweep: pure tensor code around one forward function.

Shapes: C channels, H x W image, k window side, S samples per window, n_w windows,
T targets (classes or channels), B forward batch size.

``readout(batch)`` maps pixel-space images (B, C, H, W) to the quantities explained
(B, T): class probabilities (output layer), logits, or a hidden unit's mean activation.
The sweep replaces each window by S samples, averages the S readouts **first**
(docs/algorithm.md §1), then turns the average into relevance per window and spreads it over
the window's pixels (section 2).

Randomness is drawn per block of ``BLOCK_WINDOWS`` windows from a generator seeded by
(seed, block), so the result depends on the seed but not on the batch size.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.profiler import record_function

from ..defaults import DEFAULT_TRAIN_SIZE
from ..errors import InvalidParameterError
from ..grid import BLOCK_WINDOWS, passes_per_window
from .device import autocast, prefers_channels_last
from .geometry import window_positions, windows_to_pixels
from .samplers import Sampler

Readout = Callable[[torch.Tensor], torch.Tensor]
#: (positions (B, 2), patches (B, C, k, k)) -> (B, T): the readout of x with each window
#: replaced, for evaluators that never build the full images (exact incremental inference)
WindowReadout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


def _scope(name: str) -> contextlib.AbstractContextManager:
    """A profiler scope (``pda bench --profile``, a trace of a job) while a profiler runs;
    nothing otherwise: entering record_function costs ~0.1 ms, a tenth of a null batch."""
    if getattr(torch.autograd.profiler, "_is_profiler_enabled", True):
        return record_function(name)
    return contextlib.nullcontext()

@dataclass
class Sweep:
    """Raw sweep output: per-window mean readouts and the reference readout."""

    base: torch.Tensor  # (T,) readout of the unmodified image
    window_means: torch.Tensor  # (n, T) readout averaged over the S samples
    positions: torch.Tensor  # (n, 2) corners of the swept windows
    forward_passes: int  # window passes, without the unmodified image's
    window_ids: torch.Tensor | None = None  # (n,) indices into the full grid; None = all


def pack_partial(sweep: Sweep) -> bytes:
    """A chunk's sweep as compressed npz bytes: what a split job stores per chunk."""
    buf = io.BytesIO()
    ids = sweep.window_ids if sweep.window_ids is not None else torch.arange(
        len(sweep.window_means))
    np.savez_compressed(buf, base=sweep.base.cpu().numpy(),
                        window_means=sweep.window_means.cpu().numpy(),
                        positions=sweep.positions.cpu().numpy(),
                        window_ids=ids.cpu().numpy(),
                        forward_passes=np.int64(sweep.forward_passes))
    return buf.getvalue()


def merge_partials(parts: list[bytes], n_windows: int) -> Sweep:
    """The chunks' partial sweeps as one sweep over the full grid of ``n_windows``
    windows, in window order; every window exactly once, or ValueError."""
    loaded = [np.load(io.BytesIO(b)) for b in parts]
    ids = np.concatenate([z["window_ids"] for z in loaded])  # (n_w,)
    order = np.argsort(ids, kind="stable")
    if len(np.unique(ids)) != len(ids) or not np.array_equal(ids[order], np.arange(n_windows)):
        raise ValueError("the chunks' windows do not cover the grid exactly once")
    means = np.concatenate([z["window_means"] for z in loaded])[order]  # (n_w, T)
    positions = np.concatenate([z["positions"] for z in loaded])[order]  # (n_w, 2)
    return Sweep(base=torch.from_numpy(loaded[0]["base"]),
                 window_means=torch.from_numpy(means),
                 positions=torch.from_numpy(positions),
                 forward_passes=int(sum(int(z["forward_passes"]) for z in loaded)))


def laplace(p: torch.Tensor, train_size: int, num_classes: int) -> torch.Tensor:
    """p <- (p N + 1) / (N + K): keeps log-odds finite (docs/algorithm.md §1)."""
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


@dataclass(frozen=True)
class Forward:
    """How a sweep's forward passes run, as one object rather than six keywords threaded
    through every signature: the readout, the batch size, the precision (bf16/fp16 run
    under autocast, the base pass too, so the difference compares like with like), whether
    the base pass and the last batch are padded to ``batch_size`` (padding rows are the
    unmodified image, their outputs dropped: a compiled model sees one shape and never
    recompiles), the batches' memory format (None: what the device prefers,
    :func:`.device.prefers_channels_last`) and, for exact incremental inference, a window
    readout that gets the windows' corners and sampled patches instead of full images.
    None of them changes which samples are drawn."""

    readout: Readout
    batch_size: int = 64
    precision: str = "fp32"
    fixed_batch: bool = False
    channels_last: bool | None = None
    window_readout: WindowReadout | None = None


def run_sweep(
    forward: Forward | Readout,
    x: torch.Tensor,
    sampler: Sampler,
    *,
    window: int,
    stride: int,  # required: the defaults live in pda.defaults, not here
    samples: int,
    seed: int = 0,
    window_ids: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> Sweep:
    """Evaluate ``forward``'s readout (a :class:`Forward`, or a bare readout with the
    defaults) on every window x sample perturbation of ``x`` (C, H, W).

    ``window_ids`` sweeps only those windows of the full grid (a chunk, a checkpoint
    segment, or a drill-down's fine windows); each gets exactly the samples the full sweep
    would give it, because randomness is drawn per block of the full grid.
    """
    if not isinstance(forward, Forward):
        forward = Forward(forward)
    readout, batch_size, fixed_batch = forward.readout, forward.batch_size, forward.fixed_batch
    window_readout = forward.window_readout
    if samples < 1:
        raise InvalidParameterError(f"samples must be at least 1, got {samples}", field="samples")
    if batch_size < 1:
        raise InvalidParameterError(f"batch size must be at least 1, got {batch_size}")
    C, H, W = x.shape
    dev = x.device
    amp = autocast(dev, forward.precision)  # validates the precision before any work
    channels_last = forward.channels_last
    if channels_last is None:
        channels_last = prefers_channels_last(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    positions = window_positions(H, W, window, stride, device=dev)  # (n_w, 2)
    ids = _selected(window_ids, len(positions))  # (n,) sorted, on the CPU
    S = passes_per_window(sampler, samples)
    total = len(ids) * S
    n_base = batch_size if fixed_batch else 1
    with amp:
        xb = x[None].expand(n_base, C, H, W).contiguous(memory_format=fmt)  # (n_base, C, H, W)
        base = readout(xb)[0].double()  # (T,)
    row_of = torch.full((len(positions),), -1, dtype=torch.long)
    row_of[ids] = torch.arange(len(ids))
    row_of = row_of.to(dev)  # full-grid window id -> row of ``sums``
    sums = torch.zeros(len(ids), base.numel(), dtype=torch.float64, device=dev)  # (n, T)
    reuse = Reused()  # one batch buffer for the sweep: only the windows change per batch

    def evaluate(win: torch.Tensor, patches: torch.Tensor) -> None:
        """One forward batch: windows ``win`` (n,) replaced by ``patches`` (n, C, k, k)."""
        pos = positions[win]  # (n, 2)
        with _scope("pda.forward"), amp:
            if window_readout is not None:
                out = window_readout(pos, patches)  # (n, T)
            else:
                batch = _perturbed_batch(x, pos, patches, batch_size if fixed_batch else
                                         len(win), fmt, reuse=reuse)
                out = readout(batch)[: len(win)]  # (n, T)
        with _scope("pda.accumulate"):
            sums.index_add_(0, row_of[win], out.double())

    done = 0
    for win, patches in _batches(sampler, ids, len(positions), S, seed, batch_size, window, C,
                                    dev):
        evaluate(win, patches)
        done += len(win)
        if progress is not None:
            progress(done, total)
    return Sweep(base=base, window_means=sums / S, positions=positions[ids.to(dev)],
                 forward_passes=total, window_ids=None if window_ids is None else ids)


def _selected(window_ids: torch.Tensor | None, n_w: int) -> torch.Tensor:
    """The window ids to sweep, sorted and unique, on the CPU; all of them by default."""
    if window_ids is None:
        return torch.arange(n_w)
    ids = torch.unique(torch.as_tensor(window_ids, dtype=torch.long).cpu())  # sorted
    if len(ids) and (ids[0] < 0 or ids[-1] >= n_w):
        raise InvalidParameterError(f"window ids must lie in 0..{n_w - 1}")
    return ids


def _batches(sampler: Sampler, ids: torch.Tensor, n_w: int, S: int, seed: int,
             batch_size: int, k: int, C: int, dev: torch.device):
    """Yield (window ids (n,), patches (n, C, k, k)) batches of ``batch_size`` passes.

    Samples are drawn a whole block of the full grid at a time, from a generator seeded
    by (seed, block), and the windows not asked for are dropped: a window's samples never
    depend on which other windows are swept, nor on the batch size.
    """
    pend_ids: list[torch.Tensor] = []
    pend_patches: list[torch.Tensor] = []
    n_pending = 0
    blocks = torch.div(ids, BLOCK_WINDOWS, rounding_mode="floor")
    for block in torch.unique(blocks).tolist():
        start = block * BLOCK_WINDOWS
        stop = min(start + BLOCK_WINDOWS, n_w)
        wanted = ids[blocks == block]  # (b,) full-grid ids in this block
        gen = torch.Generator(device=dev).manual_seed(_block_seed(seed, block))
        # samplers get CPU ids: they group windows by geometry without a device sync
        with _scope("pda.sample"):
            drawn = sampler.sample(torch.arange(start, stop), S, gen)  # (stop-start, S, C, k, k)
        if len(wanted) < stop - start:
            drawn = drawn[(wanted - start).to(drawn.device)]  # (b, S, C, k, k)
        win = wanted.to(dev)[:, None].expand(len(wanted), S).reshape(-1)  # (b*S,)
        pend_ids.append(win)
        pend_patches.append(drawn.reshape(-1, C, k, k))  # (b*S, C, k, k)
        n_pending += len(win)
        while n_pending >= batch_size:
            all_ids, all_patches = torch.cat(pend_ids), torch.cat(pend_patches)
            yield all_ids[:batch_size], all_patches[:batch_size]
            pend_ids, pend_patches = [all_ids[batch_size:]], [all_patches[batch_size:]]
            n_pending -= batch_size
    if n_pending:
        yield torch.cat(pend_ids), torch.cat(pend_patches)


class Reused:
    """A sweep's batch buffer between batches: the (m, C, H, W) batch and the corners
    (n, 2) of the windows its first n rows had replaced, with their side k."""

    def __init__(self) -> None:
        self.batch: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.k = 0


def _window_rows(pos: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Batch row, pixel row and pixel column indices of windows ``pos`` (n, 2):
    (n, 1, 1), (n, k, 1), (n, 1, k)."""
    offs = torch.arange(k, device=pos.device)
    rows = (pos[:, 0:1] + offs)[:, :, None]  # (n, k, 1)
    cols = (pos[:, 1:2] + offs)[:, None, :]  # (n, 1, k)
    return torch.arange(len(pos), device=pos.device)[:, None, None], rows, cols


def _perturbed_batch(x: torch.Tensor, pos: torch.Tensor, patches: torch.Tensor, m: int,
                     fmt: torch.memory_format, reuse: Reused | None = None) -> torch.Tensor:
    """(m, C, H, W) copies of ``x``, the first n with window ``pos[i]`` set to
    ``patches[i]`` (n, C, k, k); rows n..m-1 stay the unmodified image (padding).

    With ``reuse`` (a sweep's), the previous batch's buffer is used again when it has the
    same shape: the windows it had replaced are put back from ``x`` and the new ones
    written, instead of copying the whole image into every row (the same values, bit for
    bit; the readout must not keep the batch past its call, as none does)."""
    with _scope("pda.batch"):
        k = patches.shape[-1]
        C, H, W = x.shape
        batch = reuse.batch if reuse is not None else None
        if batch is None or batch.shape[0] != m or batch.device != x.device or \
                batch.dtype != x.dtype or not batch.is_contiguous(memory_format=fmt):
            batch = torch.empty((m, C, H, W), dtype=x.dtype, device=x.device,
                                memory_format=fmt)
            batch.copy_(x.expand(m, C, H, W))  # (m, C, H, W)
        elif reuse is not None and reuse.pos is not None:  # put the last windows back
            b, rows, cols = _window_rows(reuse.pos, reuse.k)
            batch[b, :, rows, cols] = x[:, rows, cols].permute(1, 2, 3, 0)  # (n', k, k, C)
        b, rows, cols = _window_rows(pos, k)
        batch[b, :, rows, cols] = patches.permute(0, 2, 3, 1)  # indexed view (n, k, k, C)
        if reuse is not None:
            reuse.batch, reuse.pos, reuse.k = batch, pos, k
    return batch


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
    scores = window_scores(sweep, log_odds=log_odds, train_size=train_size,
                           num_classes=num_classes)
    return windows_to_pixels(scores, height, width, window, stride)


def window_scores(sweep: Sweep, *, log_odds: bool, train_size: int = DEFAULT_TRAIN_SIZE,
                  num_classes: int | None = None) -> torch.Tensor:
    """Relevance of each swept window (n, T): weight of evidence or activation difference."""
    base = sweep.base[None, :].expand_as(sweep.window_means)  # (n, T)
    if log_odds:
        if num_classes is None:
            raise ValueError("num_classes is needed for the Laplace correction")
        return weight_of_evidence(base, sweep.window_means, train_size, num_classes)
    return base - sweep.window_means
