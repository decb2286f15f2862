"""Which graph nodes a patch can pass through, and how.

Shapes as in :mod:`.patch`. Three kinds of local ops:

- **pointwise** (batch-norm in eval mode, activations, arithmetic with per-channel
  constants, channel indexing): the output patch is the op applied to the input patch,
  in the same rectangle;
- **between maps** (add/mul/sub/div of two maps, concatenation along channels): both
  maps are read over the union of their rectangles and combined;
- **sliding** (conv2d with any stride, padding, dilation and groups, max/avg pooling):
  the output rectangle is every output whose receptive field meets the input patch
  (:func:`.patch.affected`); its input, halo included, is read from the cached map with
  the patch pasted, padded with the layer's own padding value only where it crosses the
  map border, and the op runs with padding 0 on that region.

Everything else (global pooling, flatten, linear layers, unknown modules) is not local:
:func:`rule` returns None and the caller completes the maps and runs the op as is.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .patch import Patch, affected, region, union

POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU,
    nn.Tanh, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout2d,
)
POINTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.gelu,
    F.leaky_relu, F.elu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip,
}
POINTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "clip", "contiguous", "float",
}
BINARY = {
    operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.truediv,
    torch.add, torch.mul, torch.sub, torch.div,
}
BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "div"}


@dataclass(frozen=True)
class Sliding:
    """A sliding-window op: kernel extents, strides, leading pads (per axis), the value
    its padding reads, and the op itself run with padding 0 on a region."""

    k: tuple[int, int]  # extent including dilation: (K - 1) d + 1
    s: tuple[int, int]
    p: tuple[int, int]
    pad_value: float
    run: Callable[[torch.Tensor], torch.Tensor]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _extent(k: Any, d: Any) -> tuple[int, int]:
    k, d = _pair(k), _pair(d)
    return (k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1


def sliding_of(m: nn.Module, in_size: tuple[int, int]) -> Sliding | None:
    """The :class:`Sliding` view of a module, None when it is not one we handle exactly."""
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        if type(m) is nn.Conv2d:
            p = _pair(m.padding)
        elif getattr(m, "tf_same_padding", False):  # TF 'SAME': the extra pixel goes last
            ext = _extent(m.kernel_size, m.dilation)
            p = tuple(max((math.ceil(n / s) - 1) * s + e - n, 0) // 2
                      for n, s, e in zip(in_size, _pair(m.stride), ext, strict=True))
        else:
            return None
        return Sliding(_extent(m.kernel_size, m.dilation), _pair(m.stride), p, 0.0,
                       lambda r: F.conv2d(r, m.weight, m.bias, m.stride, 0, m.dilation,
                                          m.groups))
    if type(m) is nn.MaxPool2d:
        return Sliding(_extent(m.kernel_size, m.dilation), _pair(m.stride or m.kernel_size),
                       _pair(m.padding), -math.inf,
                       lambda r: F.max_pool2d(r, m.kernel_size, m.stride, 0, m.dilation))
    if type(m) is nn.AvgPool2d and m.divisor_override is None and not m.ceil_mode \
            and (m.count_include_pad or _pair(m.padding) == (0, 0)):
        # count_include_pad: zeros in the padding count, so reading them as 0 is exact
        return Sliding(_pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                       _pair(m.padding), 0.0,
                       lambda r: F.avg_pool2d(r, m.kernel_size, m.stride, 0))
    return None


def slide(op: Sliding, q: Patch, out_size: tuple[int, int]) -> tuple[torch.Tensor,
                                                                       torch.Tensor]:
    """Run ``op`` on patch ``q``: the output rectangle's values (B, C, h', w') and origin."""
    (H, W), (Ho, Wo) = q.map_size, out_size
    (kh, kw), (sh, sw), (ph, pw) = op.k, op.s, op.p
    r0, h = affected(q.origin[:, 0], q.size[0], kh, sh, ph, Ho)
    c0, w = affected(q.origin[:, 1], q.size[1], kw, sw, pw, Wo)
    origin = torch.stack([r0, c0], 1)  # (B, 2) output rectangle
    need = ((h - 1) * sh + kh, (w - 1) * sw + kw)  # input rectangle, halo included
    pads = (ph, max(0, (Ho - 1) * sh - ph + kh - H), pw, max(0, (Wo - 1) * sw - pw + kw - W))
    start = origin * origin.new_tensor([sh, sw]) - origin.new_tensor([ph, pw])  # (B, 2)
    return op.run(region(q, start, need, pads, op.pad_value)), origin


def _is_local_const(v: Any, ndim: int) -> bool:
    """Numbers and tensors constant over space (e.g. (1, C, 1, 1)) broadcast pointwise."""
    if isinstance(v, (int, float, bool)) or v is None:
        return True
    if isinstance(v, torch.Tensor):
        return v.dim() == 0 or (2 <= v.dim() <= ndim and v.shape[-1] == 1 and v.shape[-2] == 1)
    return False


def _channel_index(idx: Any, ndim: int) -> bool:
    """``x[:, c]`` or ``x[:, a:b]`` on a (B, C, H, W) map: leaves batch and space alone."""
    return (isinstance(idx, tuple) and len(idx) == 2 and idx[0] == slice(None)
            and isinstance(idx[1], (int, slice)) and ndim == 4)


def rule(gm: fx.GraphModule, node: fx.Node, args: list[Any], kwargs: dict[str, Any]
         ) -> str | None:
    """The kind of local op ``node`` is, given its (evaluated) arguments, or None."""
    patches = [a for a in args if isinstance(a, Patch)]
    if isinstance(args[0] if args else None, (list, tuple)):
        patches = [a for a in args[0] if isinstance(a, Patch)]
    if not patches:
        return None
    ndim = patches[0].data.dim()
    others = [a for a in list(args) + list(kwargs.values()) if not isinstance(a, Patch)]
    t = node.target
    if node.op == "call_module":
        m = gm.get_submodule(str(t))
        if isinstance(m, POINTWISE_MODULES) or (isinstance(m, nn.BatchNorm2d) and not m.training):
            return "pointwise" if not (isinstance(m, nn.Dropout) and m.training) else None
        return "sliding" if len(args) == 1 and not kwargs else None
    if t in BINARY or (node.op == "call_method" and t in BINARY_METHODS):
        if len(patches) == 2 and len(args) == 2 and not kwargs:
            return "between" if patches[0].map_size == patches[1].map_size else None
        return "pointwise" if all(_is_local_const(o, ndim) for o in others) else None
    if t in POINTWISE_FUNCTIONS or (node.op == "call_method" and t in POINTWISE_METHODS):
        return "pointwise" if len(patches) == 1 and isinstance(args[0], Patch) and all(
            _is_local_const(o, ndim) for o in others) else None
    if t is operator.getitem and isinstance(args[0], Patch):
        return "pointwise" if _channel_index(args[1], ndim) else None
    if t in (torch.unsqueeze, "unsqueeze") and isinstance(args[0], Patch):
        d = args[1] if len(args) > 1 else kwargs.get("dim")
        d = d + ndim + 1 if isinstance(d, int) and d < 0 else d
        return "pointwise" if isinstance(d, int) and 1 <= d <= ndim - 2 else None
    if t is torch.cat and isinstance(args[0], (list, tuple)):
        d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        d = d + ndim if d < 0 else d
        ok = all(isinstance(a, Patch) for a in args[0]) and 1 <= d <= ndim - 3
        return "cat" if ok and len({a.map_size for a in args[0]}) == 1 else None
    return None


def between(q: list[Patch], combine: Callable[[list[torch.Tensor]], torch.Tensor]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine maps read over the union of their rectangles: values and origin."""
    origin, size = union(q)
    return combine([region(a, origin, size) for a in q]), origin
