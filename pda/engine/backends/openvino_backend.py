"""OpenVINO on the CPU: the fastest exact runtime measured on the 2-core CPU
(docs/performance.md, "Execution backends").

Converting a torch model takes seconds (EfficientNet-Lite0: ~10 s through torch.export), so a
converted graph is saved as OpenVINO IR under ``cache_dir`` keyed by :func:`.graphs.graph_key`
(weights, normalisation, readout, batch shape, OpenVINO version) and compiled with
OpenVINO's own ``CACHE_DIR`` (the compiled blob), so a restarted worker reads both back
in well under a second. Precision is explicit: OpenVINO's CPU default is bf16 where the
CPU has it, which is not exact; ``fp32`` asks for f32, ``bf16`` opts in.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...errors import InvalidParameterError
from .graphs import graph_key, graph_module, usable_cache_dir

Net = Callable[[torch.Tensor], torch.Tensor]
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
#: conversions from torch done in this process (tests check the disk cache with it)
CONVERSIONS = {"count": 0}


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def capabilities() -> tuple[str, ...]:
    """OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (FP32, BF16 where the CPU has
    AVX512_BF16 or AMX, ...), asked once per process."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def offers(precision: str) -> bool:
    """Whether OpenVINO runs ``precision`` natively on this CPU (False where not installed)."""
    need = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}.get(precision)
    return available() and need is not None and need in capabilities()


def check(precision: str, device: torch.device) -> None:
    """A clear error for what OpenVINO cannot run here."""
    if device.type != "cpu":
        raise InvalidParameterError(f"backend openvino runs on the CPU, not {device.type}; "
                                    "use backend compile or torch", field="backend")
    caps = capabilities()
    need = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}.get(precision)
    if need is None or need not in caps:
        raise InvalidParameterError(
            f"precision {precision} is not available with openvino on this CPU (it offers "
            f"{', '.join(c for c in caps if c in ('FP32', 'BF16', 'FP16'))})",
            field="precision")


def _convert(model: Any, layer: str, shape: tuple[int, ...], path: Path | None) -> Any:
    """The OpenVINO model of the readout graph: from the IR cache, or converted (and saved)."""
    import openvino as ov

    if path is not None and path.exists() and path.with_suffix(".bin").exists():
        return ov.Core().read_model(str(path))
    graph, example = graph_module(model, layer).cpu(), torch.rand(*shape)
    with torch.no_grad():
        try:  # torch.export first: ~2x faster to convert than TorchScript tracing
            source: Any = torch.export.export(graph, (example,))
            kwargs: dict[str, Any] = {}
        except Exception:  # TorchScript .pt files and models export cannot capture
            source, kwargs = graph, {"example_input": example, "input": [shape]}
        ov_model = ov.convert_model(source, **kwargs)
    CONVERSIONS["count"] += 1
    if path is not None:  # write then rename: a crash never leaves a half-written IR
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.xml")
        ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    return ov_model


def openvino_net(model: Any, layer: str, precision: str, batch_size: int,
                 cache_dir: Path | None, *, digest: str | None = None) -> Net:
    """A static-shape (batch_size, C, H, W) OpenVINO net: pixel batch -> (B, K | ch) fp32.

    The caller pads batches to ``batch_size``. One infer request, behind a lock: the net
    is shared by the jobs of a worker process. ``digest``: the weights' digest the caller
    just took (:func:`.graphs.weights_digest`; taken here when None).
    """
    import openvino as ov

    check(precision, model.device)
    shape = (batch_size, 3, *model.input_size)
    folder, path = usable_cache_dir(cache_dir, "openvino"), None
    if folder is not None:
        key = graph_key(model, layer, shape, f"openvino {ov.__version__}", digest=digest)
        path = folder / f"{key}.xml"
    ov_model = _convert(model, layer, shape, path)
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision]}
    if folder is not None:
        config["CACHE_DIR"] = str(folder / "compiled")
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def net(b: torch.Tensor) -> torch.Tensor:
        arr = b.detach().float().contiguous().numpy()  # (B, C, H, W) NCHW
        with lock:
            request.infer({0: arr})
            out = torch.from_numpy(request.get_output_tensor(0).data.copy())
        return out.float()  # (B, K) or (B, ch)

    return net
