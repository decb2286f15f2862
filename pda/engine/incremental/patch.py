"""Patches: the changed rectangle of one feature map, per batch item, and its arithmetic.

Shapes: B batch items (windows x samples), C channels, H x W the full map, h x w the
common patch size of a node (one size for the whole batch, Krypton's batching trick,
Nakandala et al. SIGMOD 2019 §4), K kernel extent (dilation included), s stride, p padding.

A :class:`Patch` holds, for every item, the values of a node's map inside a rectangle
of size h x w whose top-left corner is ``origin[b]``; outside the rectangle the map
equals ``full``, the node's value on the unmodified image. Everything here is exact:
a rectangle is always chosen to contain every output the window can change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Patch:
    """A node's value for B perturbed images: ``full`` with ``data`` pasted at ``origin``."""

    data: torch.Tensor  # (B, *mid, h, w) the changed region of every item
    origin: torch.Tensor  # (B, 2) long, (row, col) of the region's top-left corner
    full: torch.Tensor  # (1, *mid, H, W) the node's value on the unmodified image
    padded: dict[tuple, torch.Tensor] = field(default_factory=dict)  # shared per node

    @property
    def size(self) -> tuple[int, int]:
        return self.data.shape[-2], self.data.shape[-1]

    @property
    def map_size(self) -> tuple[int, int]:
        return self.full.shape[-2], self.full.shape[-1]

    def like(self, data: torch.Tensor, full: torch.Tensor,
             padded: dict[tuple, torch.Tensor]) -> Patch:
        """The same rectangle holding another node's values (pointwise ops)."""
        return Patch(data, self.origin, full, padded)


def affected(a: torch.Tensor, n: int, k: int, s: int, p: int, out_len: int
             ) -> tuple[torch.Tensor, int]:
    """Outputs of a sliding op (extent k, stride s, leading pad p) touched by input
    rows [a, a + n): their first index (B,) and one common count for every item.

    Output o reads input rows [o s - p, o s - p + k). The count is the largest over the
    s alignments of ``a``, capped at the map; the start is moved inward at the border
    so the rectangle keeps its size and still contains every touched output.
    """
    counts = [(r + n - 1 + p) // s - -((r + p - k + 1) // -s) + 1 for r in range(s)]
    m = min(max(counts), out_len)
    lo = torch.div(a + p - k + 1 + s - 1, s, rounding_mode="floor")  # ceil((a + p - k + 1) / s)
    return lo.clamp(min=0).clamp(max=out_len - m), m


def union(patches: list[Patch]) -> tuple[torch.Tensor, tuple[int, int]]:
    """The smallest common rectangle holding every patch's rectangle: origin (B, 2), size."""
    lo = torch.stack([q.origin for q in patches]).amin(0)  # (B, 2)
    hi = torch.stack([q.origin + q.origin.new_tensor(q.size) for q in patches]).amax(0)
    size = (hi - lo).amax(0).tolist()  # common size (2,)
    H, W = patches[0].map_size
    bound = lo.new_tensor([H - size[0], W - size[1]])
    return torch.minimum(lo, bound), (int(size[0]), int(size[1]))


def padded_map(q: Patch, pads: tuple[int, int, int, int], value: float) -> torch.Tensor:
    """``full`` padded by (top, bottom, left, right) with ``value``, channels last:
    (H + top + bottom, W + left + right, C'); cached per node and padding."""
    key = (pads, value)
    if key not in q.padded:
        top, bottom, left, right = pads
        full = q.full.reshape(1, -1, *q.map_size)  # (1, C', H, W)
        P = torch.nn.functional.pad(full, (left, right, top, bottom), value=value)
        q.padded[key] = P[0].permute(1, 2, 0).contiguous()  # (Hp, Wp, C')
    return q.padded[key]


def region(q: Patch, origin: torch.Tensor, size: tuple[int, int],
           pads: tuple[int, int, int, int] = (0, 0, 0, 0), value: float = 0.0,
           paste: bool = True) -> torch.Tensor:
    """Each item's map (``full`` with its patch pasted; ``paste`` False: ``full`` alone)
    read over the rectangle at ``origin`` (B, 2) of ``size``; rows/cols up to ``pads``
    outside the map read ``value`` (a layer's zero padding, or -inf for max pooling).
    Returns (B, *mid, h, w)."""
    h, w = size
    top, _, left, _ = pads
    P = padded_map(q, pads, value)  # (Hp, Wp, C')
    dev = origin.device
    B = len(origin)
    # one spare row and column receive the parts of a patch outside the rectangle
    rows = origin[:, :1] + top + torch.arange(h + 1, device=dev).clamp(max=h - 1)  # (B, h+1)
    cols = origin[:, 1:] + left + torch.arange(w + 1, device=dev).clamp(max=w - 1)  # (B, w+1)
    out = P[rows[:, :, None], cols[:, None, :]]  # (B, h+1, w+1, C')
    hp, wp = q.size if paste else (0, 0)
    tr = q.origin[:, :1] - origin[:, :1] + torch.arange(hp, device=dev)  # (B, hp) local rows
    tc = q.origin[:, 1:] - origin[:, 1:] + torch.arange(wp, device=dev)  # (B, wp)
    tr = torch.where((tr >= 0) & (tr < h), tr, h)
    tc = torch.where((tc >= 0) & (tc < w), tc, w)
    b = torch.arange(B, device=dev)[:, None, None]
    if paste:
        data = q.data.reshape(B, -1, hp, wp).permute(0, 2, 3, 1)  # (B, hp, wp, C')
        out[b, tr[:, :, None], tc[:, None, :]] = data.to(out.dtype)
    out = out[:, :h, :w].permute(0, 3, 1, 2)  # (B, C', h, w), channels-last memory
    return out.reshape(B, *q.full.shape[1:-2], h, w)


def materialise(q: Patch) -> torch.Tensor:
    """The full perturbed maps (B, *mid, H, W): ``full`` with every item's patch pasted."""
    B, (H, W), (h, w) = len(q.origin), q.map_size, q.size
    dev = q.origin.device
    full = q.full.reshape(1, -1, H, W)  # (1, C', H, W)
    out = torch.empty((B, *full.shape[1:]), dtype=full.dtype, device=dev,
                      memory_format=torch.channels_last)  # NHWC: what oneDNN/cuDNN prefer
    out.copy_(full.expand_as(out))  # (B, C', H, W)
    rows = (q.origin[:, :1] + torch.arange(h, device=dev))[:, :, None]  # (B, h, 1)
    cols = (q.origin[:, 1:] + torch.arange(w, device=dev))[:, None, :]  # (B, 1, w)
    b = torch.arange(B, device=dev)[:, None, None]
    data = q.data.reshape(B, -1, h, w).permute(0, 2, 3, 1)  # (B, h, w, C')
    out[b, :, rows, cols] = data.to(out.dtype)  # indexed view (B, h, w, C')
    return out.reshape(B, *q.full.shape[1:])


def patch_sum(q: Patch) -> torch.Tensor:
    """Per-channel sum of each item's full map (B, C'), updated from the cached sum:
    sum(full) + sum(patch) - sum(full under the patch)."""
    B = len(q.origin)
    h, w = q.size
    full = q.full.reshape(1, -1, *q.map_size)  # (1, C', H, W)
    base = q.padded.setdefault(("sum",), full.double().sum((2, 3)))  # (1, C')
    under = region(q, q.origin, (h, w), paste=False)  # (B, *mid, h, w) cached values
    delta = q.data.reshape(B, -1, h, w).double().sum((2, 3)) \
        - under.reshape(B, -1, h, w).double().sum((2, 3))  # (B, C')
    return base + delta
