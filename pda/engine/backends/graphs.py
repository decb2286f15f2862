"""The graphs a backend runs: pixel-space batches (B, C, H, W) in, the readout's full
vector out.

- ``logits`` graph: normalisation + the classifier, (B, K). The output layer's softmax
  and the target columns are taken after it, in fp32 torch, by the readout
  (:mod:`pda.engine.backends`): one converted graph then serves every target set and
  both the output and logits layers, and the softmax is exactly eager torch's.
- ``hidden`` graph: normalisation + the classifier up to a named module, whose output
  is averaged over space per channel (paper Fig. 5/6), (B, channels). The module's
  output is captured by a forward hook while tracing, and only it is returned: every op
  after it is dead code, which OpenVINO, ONNX and Inductor drop. This truncates any
  model whose layers can be hooked, including ones torch.fx cannot trace (the default
  EfficientNet-Lite0 pads by input shape).

:func:`graph_key` names a graph for the on-disk cache: a hash of the weights as they are
at the call, the normalisation, the readout and the batch shape.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...defaults import OUTPUT_LAYERS
from ...errors import UnknownLayerError


class PixelLogits(nn.Module):
    """Pixel-space images (B, C, H, W) in [0, 1] -> logits (B, K)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.normalise = model.normaliser  # the model's own Normalise module
        self.net = model.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))  # (B, K)


class _Stop(Exception):
    """Raised by the capture hook once the hidden activation is in (eager runs only)."""


class HiddenMeans(nn.Module):
    """Pixel-space images (B, C, H, W) -> per-channel spatial means of ``layer`` (B, ch).

    The one hidden-layer capture: traced for the converted backends (the tail after the
    layer is dead code there), and run eagerly by torch with ``stop_early``, where the hook
    ends the forward pass at the layer so the tail never runs."""

    def __init__(self, model: Any, layer: str, *, stop_early: bool = False) -> None:
        super().__init__()
        self.body = PixelLogits(model)
        self.layer = model.get_layer(layer)  # UnknownLayerError for a bad name or a file
        self.layer_name = layer
        self.stop_early = stop_early

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            captured.append(out[0] if isinstance(out, tuple) else out)
            if self.stop_early:
                raise _Stop

        handle = self.layer.register_forward_hook(hook)
        try:
            self.body(x)  # the tail after ``layer`` is dead code in a traced graph
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise UnknownLayerError(f"layer {self.layer_name!r} is not used in the forward pass")
        out = captured[0].float()
        return out.flatten(2).mean(2) if out.dim() > 2 else out  # (B, ch)


def graph_module(model: Any, layer: str, *, stop_early: bool = False) -> nn.Module:
    """The graph for ``layer`` (output, logits or a module name), in eval mode;
    ``stop_early``: a hidden layer's eager run ends at the layer (never traced)."""
    g = PixelLogits(model) if layer in OUTPUT_LAYERS else HiddenMeans(
        model, layer, stop_early=stop_early)
    try:
        g.eval()
    except NotImplementedError:  # exported programs refuse .eval(); the registry set it
        g.training = False  # (files have no hookable layers: g is a PixelLogits)
    return g.to(model.device)


def graph_kind(layer: str) -> str:
    """Output and logits share one graph (the softmax is taken after it)."""
    return "logits" if layer in OUTPUT_LAYERS else f"hidden:{layer}"


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, shapes, dtypes and bytes), as they are
    now. Never memoised: a digest kept on the module goes stale after an in-place change
    and is copied by ``copy.deepcopy`` onto a copy whose weights then change (issue 19);
    hashing the default model costs milliseconds against a sweep's seconds (notes)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    state = module.state_dict(keep_vars=False)
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():  # the bytes as they are, without a copy on the CPU
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def usable_cache_dir(cache_dir: Path | str | None, sub: str) -> Path | None:
    """``cache_dir/sub``, created; None (with a warning) where it cannot be written: the
    disk cache saves seconds at start, it must never fail a job."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / sub
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        logging.getLogger("pda").warning("backend cache %s is not writable (%s); converting "
                                         "without it", path, exc)
        return None
    return path


def graph_key(model: Any, layer: str, shape: tuple[int, ...], *extra: str,
              digest: str | None = None) -> str:
    """Cache key of the graph for (weights, normalisation, readout, batch shape, extra);
    ``digest``: the weights' :func:`weights_digest`, when the caller has just taken it."""
    parts = [digest or weights_digest(model.module), repr(tuple(model.mean)),
             repr(tuple(model.std)),
             graph_kind(layer), repr(tuple(shape)), *extra]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
