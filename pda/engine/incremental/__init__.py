"""Exact incremental inference for the sweep's ``window_readout`` hook.

Shapes: B windows x samples, C channels, k window side, T targets.

:func:`window_readout` turns a model and an image into ``(positions (B, 2), patches
(B, C, k, k)) -> (B, T)``, the same readout ``explain`` builds for full images
(softmax probabilities, logits, or a hidden layer's per-channel mean), computed from
the unmodified image's cached activations (:mod:`.graph`).
"""

from __future__ import annotations

from typing import Any

import torch

from ...defaults import OUTPUT_LAYERS
from .graph import (
    DENSE_ABOVE,
    IncrementalGraph,
    IncrementalUnsupportedError,
    find_layer,
    layer_mean,
    trace,
)
from .patch import materialise

__all__ = ["DENSE_ABOVE", "IncrementalGraph", "IncrementalUnsupportedError", "graph_for",
           "window_readout"]


def graph_for(model: Any, x: torch.Tensor, layer: str = "output",
              dense_above: float = DENSE_ABOVE) -> IncrementalGraph:
    """The incremental graph of a :class:`~pda.models.registry.LoadedModel` on pixel-space
    image ``x`` (C, H, W); stops at ``layer`` unless it is ``output``/``logits``."""
    if not getattr(model, "hookable", True):
        raise IncrementalUnsupportedError("exported and TorchScript models are not traced")
    gm = trace(model.module, model.normaliser)
    stop = None
    if layer not in OUTPUT_LAYERS:
        stop = find_layer(gm, layer)
        if stop is None:
            raise IncrementalUnsupportedError(f"layer {layer!r} is not in the traced graph")
    return IncrementalGraph(gm, x.to(model.device), stop, dense_above)


def window_readout(model: Any, x: torch.Tensor, layer: str, idx: torch.Tensor,
                   dense_above: float = DENSE_ABOVE):
    """The readout of ``explain`` for the targets ``idx`` (T,), evaluated incrementally:
    ``(positions (B, 2), patches (B, C, k, k)) -> (B, T)``."""
    graph = graph_for(model, x, layer, dense_above)

    def read(positions: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        value = graph(positions, patches.to(x.dtype))
        if layer not in OUTPUT_LAYERS:
            return layer_mean(value)[:, idx]  # (B, T)
        logits = materialise(value) if not isinstance(value, torch.Tensor) else value
        if layer == "output":
            return torch.softmax(logits.float(), dim=1)[:, idx]  # (B, T)
        return logits.float()[:, idx]  # (B, T)

    read.graph = graph  # type: ignore[attr-defined]
    return read

