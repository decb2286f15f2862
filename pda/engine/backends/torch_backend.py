"""Torch backends: ``torch`` (eager, the fallback that runs everything) and ``compile``
(``torch.compile`` at one fixed batch shape; the CUDA default).

Both run under autocast for bf16/fp16 (convolutions and matmuls in reduced precision;
inputs and the returned readout stay fp32).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ...defaults import OUTPUT_LAYERS
from ..device import autocast
from .graphs import graph_module

Net = Callable[[torch.Tensor], torch.Tensor]
log = logging.getLogger("pda")


def eager_net(model: Any, layer: str, precision: str) -> Net:
    """Eager torch: logits (B, K), or a hidden layer's channel means (B, ch) computed with
    a hook that stops the forward pass at the layer (the tail is never run)."""
    if layer in OUTPUT_LAYERS:
        def logits(b: torch.Tensor) -> torch.Tensor:
            with autocast(b.device, precision):
                return model(b).float()  # (B, K)

        return logits
    graph = graph_module(model, layer, stop_early=True)  # the one capture (graphs.py)

    def hidden(b: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(b.device, precision):
            return graph(b)  # (B, ch): Fig. 5/6 of the paper, units averaged over space

    return hidden


def compiled_net(model: Any, layer: str, precision: str, batch_size: int,
                 channels_last: bool) -> tuple[Net, bool]:
    """``torch.compile`` of the readout graph, compiled now at (batch_size, C, H, W).

    Returns (net, compiled); if compiling fails (no C++ compiler in a slim image, an
    unsupported op) it logs why and returns the eager net: a slower job, never a failed
    one. The caller pads every batch to ``batch_size`` so there is one compilation.
    """
    graph = graph_module(model, layer)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    probe = torch.rand(batch_size, 3, *model.input_size, device=model.device)
    try:
        if layer not in OUTPUT_LAYERS:
            # Dynamo cannot trace the hook registered inside HiddenMeans.forward;
            # torch.export can, and Inductor then drops the layers after the hidden one
            with torch.no_grad():
                graph = torch.export.export(graph, (probe,)).module()
        fast = torch.compile(graph, dynamic=False)
    except Exception as exc:  # an export failure: run eager, as for a compile failure
        return _fallback(model, layer, precision, exc), False

    def net(b: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(b.device, precision):
            return fast(b).float()

    try:
        net(probe.contiguous(memory_format=fmt))  # compile now, not mid-sweep
    except Exception as exc:  # compile is an optimisation, never a failure
        return _fallback(model, layer, precision, exc), False
    return net, True


def _fallback(model: Any, layer: str, precision: str, exc: Exception) -> Net:
    log.warning("torch.compile failed for %s (%s); running eager", model.name,
                str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    return eager_net(model, layer, precision)
