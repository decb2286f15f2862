"""Exact incremental inference over a torch.fx graph (Krypton, Nakandala et al. 2019).

Shapes: B windows x samples in a batch, C channels, H x W image, k window side.

:class:`IncrementalGraph` runs the unmodified image once and keeps every node's value.
A batch of windows then enters as a :class:`.patch.Patch` of the input (each item's
k x k replacement at its own corner) and flows through the graph node by node: local
ops (:mod:`.ops`) turn patches into patches; once a patch covers more than
``dense_above`` of its map, or a non-local op comes (global pooling, flatten, linear,
anything unknown), the patch is pasted into copies of the cached map and the rest of
the graph runs as usual. Results equal the full recomputation up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from .ops import Sliding, between, rule, slide, sliding_of
from .patch import Patch, affected, materialise, patch_sum

DENSE_ABOVE = 0.6  # patch area / map area above which the rest runs on full maps


class IncrementalUnsupportedError(Exception):
    """The model cannot be traced into a graph (use the naive sweep)."""


class _Normalised(nn.Module):
    """Pixel space to the model's input space, then the model: one graph for both."""

    def __init__(self, net: nn.Module, normalise: nn.Module) -> None:
        super().__init__()
        self.normalise = normalise  # pda.engine.inputs.Normalise, traced through
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))


class _Tracer(fx.Tracer):
    """torch.nn modules stay whole, and so does every Conv2d subclass (their forward may
    read shapes, like TF 'SAME' padding): :func:`.ops.sliding_of` knows the ones it can
    treat exactly, the rest run on full maps."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)


def trace(net: nn.Module, normalise: nn.Module) -> fx.GraphModule:
    """The normalising wrapper around ``net`` as a graph module."""
    root = _Normalised(net, normalise)
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # data-dependent control flow, TorchScript, exported programs
        raise IncrementalUnsupportedError(f"cannot trace the model: {e}") from e
    return fx.GraphModule(root, graph)


def _call(gm: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Run one node the way fx.Interpreter does."""
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    if node.op == "output":
        return args[0]
    raise AssertionError(f"unexpected node {node.op}")


def find_layer(gm: fx.GraphModule, layer: str) -> fx.Node | None:
    """The node whose value is module ``layer``'s output: the module's own node, or the
    last node traced inside it."""
    name = f"net.{layer}"
    last = None
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == name:
            return node
        if name in (node.meta.get("nn_module_stack") or {}):
            last = node
    return last


class IncrementalGraph:
    """The graph of a pixel-space model, its cached base values, incremental batches."""

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor, stop: fx.Node | None = None,
                 dense_above: float = DENSE_ABOVE) -> None:
        self.gm = gm
        self.dense_above = dense_above
        out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
        self.stop = stop or out
        self.nodes = _ancestors(self.stop)  # topological order, the ones the stop needs
        self.base: dict[fx.Node, Any] = {}
        self.changed: set[fx.Node] = set()
        self.padded: dict[fx.Node, dict[tuple, torch.Tensor]] = {}
        self.sliding: dict[fx.Node, Sliding | None] = {}
        self.macs = 0  # multiply-accumulates of conv/linear layers in the last call
        self.keep_values = False  # True: keep every node's value of the last call (tests)
        self.values: dict[fx.Node, Any] = {}
        order = {n: i for i, n in enumerate(self.nodes)}
        self.last_use = {n: max((order[u] for u in n.users if u in order), default=len(order))
                         for n in self.nodes}  # after that step a node's value can go
        with torch.inference_mode():
            self._run_base(x[None])  # (1, C, H, W)

    def _run_base(self, x: torch.Tensor) -> None:
        for node in self.nodes:
            if node.op == "placeholder":
                value, changed = x, True
            else:
                args = fx.node.map_arg(node.args, self.base.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, self.base.__getitem__)
                value = _call(self.gm, node, args, kwargs)
                changed = any(a in self.changed for a in node.all_input_nodes)
            if isinstance(value, torch.Tensor) and changed:
                value = value.clone()  # later in-place ops must not alter the cache
            self.base[node] = value
            if changed:
                self.changed.add(node)
                self.padded[node] = {}

    def __call__(self, positions: torch.Tensor, patches: torch.Tensor) -> Any:
        """The stop node's value (dense (B, ...), or a Patch for a hidden stop) when each
        window ``positions[b]`` (B, 2) of the image is replaced by ``patches[b]``
        (B, C, k, k)."""
        self.macs = 0
        env: dict[fx.Node, Any] = {}
        self.values = env
        with torch.inference_mode():
            for i, node in enumerate(self.nodes):
                if node not in self.changed:
                    env[node] = self.base[node]
                elif node.op == "placeholder":
                    env[node] = Patch(patches, positions.long(), self.base[node],
                                      self.padded[node])
                elif node.op == "output":
                    env[node] = fx.node.map_arg(node.args[0], env.__getitem__)
                else:
                    env[node] = self._step(node, env)
                if not self.keep_values:  # free maps no later node reads, as eager torch does
                    for a in node.all_input_nodes:
                        if self.last_use[a] == i and a is not self.stop:
                            del env[a]
        return env[self.stop]

    def _step(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        args = list(fx.node.map_arg(node.args, env.__getitem__))
        kwargs = dict(fx.node.map_arg(node.kwargs, env.__getitem__))
        kind = rule(self.gm, node, args, kwargs)
        value = None
        if kind is not None:
            value = self._local(node, kind, args, kwargs)
        if value is None:  # not local, or the patch grew too large: full maps from here
            args, kwargs = _dense(args), _dense(kwargs)
            value = _call(self.gm, node, tuple(args), kwargs)
            self._count(node, value, None)
        elif value.size[0] * value.size[1] > self.dense_above * value.map_size[0] * \
                value.map_size[1] and node is not self.stop:
            value = materialise(value)
        return value

    def _local(self, node: fx.Node, kind: str, args: list[Any], kwargs: dict[str, Any]
               ) -> Patch | None:
        base = self.base[node]
        if not isinstance(base, torch.Tensor) or base.dim() < 3:
            return None
        padded = self.padded[node]
        if kind == "pointwise":
            q = next(a for a in args if isinstance(a, Patch))
            cut = [a.data if isinstance(a, Patch) else a for a in args]
            return q.like(_call(self.gm, node, tuple(cut), kwargs), base, padded)
        if kind == "between":
            def combine(parts: list[torch.Tensor]) -> torch.Tensor:
                return _call(self.gm, node, tuple(parts), kwargs)
            data, origin = between(args, combine)
            return Patch(data, origin, base, padded)
        if kind == "cat":
            def cat(parts: list[torch.Tensor]) -> torch.Tensor:
                return _call(self.gm, node, (parts, *args[1:]), kwargs)
            data, origin = between(list(args[0]), cat)
            return Patch(data, origin, base, padded)
        return self._slide(node, args[0], base, padded)

    def _slide(self, node: fx.Node, q: Patch, base: torch.Tensor,
               padded: dict[tuple, torch.Tensor]) -> Patch | None:
        if node not in self.sliding:
            self.sliding[node] = sliding_of(self.gm.get_submodule(str(node.target)),
                                            q.map_size)
        op = self.sliding[node]
        if op is None:
            return None
        Ho, Wo = base.shape[-2:]
        # sizes first: straight to full maps when the output patch would be large
        h = affected(q.origin[:1, 0], q.size[0], op.k[0], op.s[0], op.p[0], Ho)[1]
        w = affected(q.origin[:1, 1], q.size[1], op.k[1], op.s[1], op.p[1], Wo)[1]
        if h * w > self.dense_above * Ho * Wo and node is not self.stop:
            return None
        data, origin = slide(op, q, (Ho, Wo))
        self._count(node, data, q)
        return Patch(data, origin, base, padded)

    def _count(self, node: fx.Node, out: Any, q: Patch | None) -> None:
        """Conv and linear multiply-accumulates (the FLOP accounting of pda bench)."""
        if node.op != "call_module" or not isinstance(out, torch.Tensor):
            return
        m = self.gm.get_submodule(str(node.target))
        if isinstance(m, nn.Conv2d):
            self.macs += out.numel() * m.weight[0].numel()
        elif isinstance(m, nn.Linear):
            self.macs += out.numel() * m.in_features


def _dense(v: Any) -> Any:
    """Arguments with every patch completed to full maps."""
    if isinstance(v, Patch):
        return materialise(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_dense(a) for a in v)
    if isinstance(v, dict):
        return {k: _dense(a) for k, a in v.items()}
    return v


def _ancestors(target: fx.Node) -> list[fx.Node]:
    """``target`` and every node it depends on, in graph order."""
    seen: set[fx.Node] = set()
    stack = [target]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return [n for n in target.graph.nodes if n in seen]


def layer_mean(value: Any) -> torch.Tensor:
    """A hidden readout (paper Fig. 5/6): per-channel spatial mean (B, C), from a patch
    incrementally (cached sum plus the patch's change) or from full maps."""
    if isinstance(value, Patch):
        H, W = value.map_size
        return (patch_sum(value) / (H * W)).float()  # (B, C)
    return value.float().flatten(2).mean(2) if value.dim() > 2 else value.float()

