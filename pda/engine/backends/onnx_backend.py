"""ONNX Runtime on the CPU (fp32 only): measured beside the others by ``pda bench``; on the
2-core CPU it is slower than OpenVINO f32, so ``auto`` never picks it
(docs/performance.md, "Execution backends").

The readout graph is exported once with the TorchScript-based exporter (no onnxscript
needed) to ``cache_dir/onnx/KEY.onnx`` (:func:`.graphs.graph_key`) and read back from there
by later processes.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...errors import InvalidParameterError
from .graphs import graph_key, graph_module, usable_cache_dir

Net = Callable[[torch.Tensor], torch.Tensor]
#: exports from torch done in this process (tests check the disk cache with it)
CONVERSIONS = {"count": 0}


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check(precision: str, device: torch.device) -> None:
    if device.type != "cpu":
        raise InvalidParameterError(f"backend onnxruntime runs on the CPU, not {device.type}",
                                    field="backend")
    if precision != "fp32":
        raise InvalidParameterError(
            f"backend onnxruntime runs fp32 only, not {precision}; use backend openvino "
            "or torch for bf16", field="precision")


def _export(model: Any, layer: str, shape: tuple[int, ...], path: Path) -> None:
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.onnx")
    graph, example = graph_module(model, layer).cpu(), torch.rand(*shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        if isinstance(model.module, torch.jit.ScriptModule):
            # a TorchScript file: the exporter cannot trace into it from a plain module,
            # but a traced wrapper calls it as a submodule
            graph = torch.jit.trace(graph, example)
        torch.onnx.export(graph, (example,), str(tmp),
                          dynamo=False, input_names=["x"], output_names=["y"],
                          # the graph is in eval mode already; exported programs (.pt2)
                          # refuse the exporter's own .train(False)
                          training=torch.onnx.TrainingMode.PRESERVE)
    CONVERSIONS["count"] += 1
    os.replace(tmp, path)


def onnx_net(model: Any, layer: str, precision: str, batch_size: int,
             cache_dir: Path | None, *, digest: str | None = None) -> Net:
    """A static-shape (batch_size, C, H, W) ONNX Runtime net: pixel batch -> (B, K | ch);
    ``digest`` as for :func:`.openvino_backend.openvino_net`."""
    import tempfile

    import onnxruntime as ort

    check(precision, model.device)
    shape = (batch_size, 3, *model.input_size)
    key = graph_key(model, layer, shape, f"onnx {torch.__version__}", digest=digest)
    folder = usable_cache_dir(cache_dir, "onnx") or Path(tempfile.mkdtemp(prefix="pda-onnx-"))
    path = folder / f"{key}.onnx"
    if not path.exists():
        _export(model, layer, shape, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lock = threading.Lock()

    def net(b: torch.Tensor) -> torch.Tensor:
        arr = b.detach().float().contiguous().numpy()  # (B, C, H, W)
        with lock:
            out = session.run(None, {"x": arr})[0]
        return torch.from_numpy(out).float()  # (B, K) or (B, ch)

    return net
