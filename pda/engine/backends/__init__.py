"""Execution backends: one place that turns (model, readout, device, precision, batch
shape) into a batch function, pixel-space images (B, C, H, W) -> readout (B, T).

Backends (docs/performance.md, "Execution backends", measures them side by side):

- ``torch``: eager, the fallback; runs everything (hidden layers stop at the layer).
- ``compile``: ``torch.compile`` at one fixed batch shape; the default on CUDA.
- ``openvino``: OpenVINO on the CPU, f32 unless bf16 is asked for; the CPU default.
- ``onnxruntime``: ONNX Runtime on the CPU, fp32; measured, never chosen by ``auto``.
- ``auto``: the fastest exact backend for the device (:func:`resolve_backend`).

Readouts: ``output`` = softmax(logits)[:, targets], ``logits`` = logits[:, targets], a
module name = that module's per-channel spatial means [:, targets]. The converted graph
returns all logits (or all channel means) and the readout takes the softmax and the
target columns in fp32 torch, so one conversion serves every job on the model
(:mod:`.graphs`). Conversions are memoised on the model object (once per worker process)
and, given ``cache_dir``, kept on disk across restarts, both keyed on the weights as they
are at the call (:func:`build_net`).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ...defaults import BACKENDS, PRECISION_BAR, PRECISION_ERROR
from ...errors import InvalidParameterError
from ...runtime import Runtime
from ..device import check_precision, prefers_channels_last
from . import onnx_backend, openvino_backend
from .graphs import graph_kind, weights_digest
from .torch_backend import compiled_net, eager_net

Net = Callable[[torch.Tensor], torch.Tensor]
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Ran:
    """What actually ran a job's forward passes, recorded in the result document (the
    concrete outcome of a :class:`pda.runtime.Runtime`'s choices)."""

    backend: str  # torch, compile, openvino or onnxruntime (never auto)
    precision: str  # fp32, bf16 or fp16
    device: str  # cpu, cuda:0, ...

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def resolve_backend(name: str, device: torch.device, precision: str = "fp32") -> str:
    """The concrete backend for ``name``; ``auto``: compile on CUDA, OpenVINO on a CPU
    where it is installed and offers ``precision`` (else torch). Precision ``auto`` chooses
    the backend as fp32 does (:func:`resolve_precision` then decides on that backend)."""
    name = (name or "auto").lower()
    if name not in BACKENDS:
        raise InvalidParameterError(f"unknown backend {name!r}; use {', '.join(BACKENDS)}",
                                    field="backend")
    precision = "fp32" if precision == "auto" else precision
    check_precision(precision, device)
    if name == "auto":
        if device.type == "cuda":
            return "compile"
        if device.type == "cpu" and openvino_backend.available():
            try:
                openvino_backend.check(precision, device)
                return "openvino"
            except InvalidParameterError:
                return "torch"
        return "torch"
    for backend, mod in (("openvino", openvino_backend), ("onnxruntime", onnx_backend)):
        if name == backend:
            if not mod.available():
                raise InvalidParameterError(
                    f"backend {name} is not installed: pip install "
                    f"{'openvino' if name == 'openvino' else 'onnxruntime onnx'} or use "
                    "backend torch", field="backend")
            mod.check(precision, device)
    return name


def native_bf16(device: torch.device, backend: str) -> bool:
    """Whether ``backend`` runs bf16 natively on ``device``: OpenVINO on a CPU whose
    OpenVINO reports BF16 (AVX512_BF16 or AMX), or torch/compile on a CUDA GPU with bf16
    (compute capability 8.0 and up). Torch's bf16 autocast on a CPU is not counted: it
    measured 0.94x fp32 on an AVX512_BF16 Xeon without AMX (docs/performance.md)."""
    if device.type == "cpu":
        return backend == "openvino" and openvino_backend.offers("bf16")
    if device.type == "cuda" and backend in ("torch", "compile"):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return False


def within_bar(precision: str) -> bool:
    """Whether ``precision``'s measured error (:data:`pda.defaults.PRECISION_ERROR`) is
    below the bar: a tenth of the default map's seed-to-seed difference, and 1 % of the
    occlusion map's peak."""
    err = PRECISION_ERROR.get(precision)
    return err is not None and err["seed_ratio"] < PRECISION_BAR and err["peak_share"] < 0.01


def resolve_precision(precision: str, device: torch.device, backend: str) -> str:
    """The concrete precision; ``auto``: bf16 where the resolved ``backend`` runs it
    natively on ``device`` and its measured error is within the bar, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if within_bar("bf16") and native_bf16(device, backend) else "fp32"


def precision_error(precision: str) -> dict[str, Any] | None:
    """What the result document says of a precision's error (None for fp32, exact to
    float rounding): the measured bound and where it was measured, or that it was not."""
    if precision == "fp32":
        return None
    err = PRECISION_ERROR.get(precision)
    if err is None:
        return {"measured": False, "see": "docs/performance.md#precision"}
    return {"measured": True, **err}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch's own work (sampling, building batches) on ``n`` threads, then restore.

    OpenVINO and ONNX Runtime bring their own thread pools; torch's OpenMP threads, which
    spin-wait between parallel regions, then compete with them for the same cores. On the
    2-vCPU machine an OpenVINO sweep ran at 0.75 of the raw rate with two torch threads and
    0.96 with one (interleaved rounds, docs/performance.md).
    """
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class BackendNet:
    """A backend's net with its runtime; pads or splits batches to its fixed batch size.

    ``torch_threads``: threads torch should keep around its calls (None: as it is).
    """

    def __init__(self, net: Net, runtime: Ran, fixed_batch: int | None,
                 channels_last: bool, torch_threads: int | None = None) -> None:
        self.net, self.runtime, self.fixed_batch, self.channels_last = (
            net, runtime, fixed_batch, channels_last)
        self.torch_threads = torch_threads

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        """Pixel batch (n, C, H, W) -> (n, K) logits or (n, ch) channel means, fp32."""
        B = self.fixed_batch
        if B is None or len(b) == B:
            return self.net(b)
        outs = []
        for chunk in b.split(B):  # (<= B, C, H, W)
            n = len(chunk)
            if n < B:  # padding rows repeat the last image; their outputs are dropped
                chunk = torch.cat([chunk, chunk[-1:].expand(B - n, *chunk.shape[1:])])
            outs.append(self.net(chunk)[:n])
        return torch.cat(outs)  # (n, K | ch)


def build_net(model: Any, layer: str, *, backend: str = "auto", precision: str = "fp32",
              batch_size: int = 4, cache_dir: Path | str | None = None) -> BackendNet:
    """The backend's net for ``model``'s ``layer`` graph, memoised on the model object
    (converted once per process; from ``cache_dir`` when an earlier process did).

    A converted or compiled graph holds a copy of the weights, so it is keyed on the
    weights as they are now (:func:`.graphs.weights_digest`, taken at every call): after
    an in-place change, or on a deep copy whose weights changed, the memo and the disk
    cache miss and the model is converted again. Eager torch runs the live module and
    needs no key."""
    name = resolve_backend(backend, model.device, precision)
    return net_for(model, layer, Runtime(
        backend=name, precision=resolve_precision(precision, model.device, name),
        batch_size=batch_size, cache_dir=Path(cache_dir) if cache_dir is not None else None))


#: converted graphs a process keeps per model (one per layer kind, backend, precision and
#: batch size): the output graph, the logits one and a few hidden layers; a request for
#: yet another hidden layer evicts the least recently used (converted again, or read from
#: the disk cache, when asked for again), so a worker's memory does not grow per layer
NETS_PER_MODEL = 4


def net_for(model: Any, layer: str, runtime: Runtime) -> BackendNet:
    """:func:`build_net` for a runtime whose backend is already resolved
    (:func:`resolve_backend`: a concrete, available name whose precision was checked) and
    whose batch size is fixed, as :func:`pda.engine.setup.prepare` does once per job."""
    name, precision, cache_dir = runtime.backend, runtime.precision, runtime.cache_dir
    batch_size = runtime.batch_size or 4
    fixed = name != "torch"
    key = (graph_kind(layer), name, precision, batch_size if fixed else None, cache_dir)
    with _LOCK:
        digest = weights_digest(model.module) if fixed else None
        nets = model.__dict__.setdefault("_backend_nets", OrderedDict())
        held = nets.get(key)
        if held is None or held[0] != digest:  # replaced: one graph per key, the current
            nets[key] = (digest, _make(model, layer, name, precision, batch_size, cache_dir,
                                       digest))
            while len(nets) > NETS_PER_MODEL:  # the least recently used graph goes
                nets.popitem(last=False)
        nets.move_to_end(key)
        return nets[key][1]


def _make(model: Any, layer: str, name: str, precision: str, batch_size: int,
          cache_dir: Path | None, digest: str | None) -> BackendNet:
    dev = model.device
    if name == "openvino":
        net = openvino_backend.openvino_net(model, layer, precision, batch_size, cache_dir,
                                            digest=digest)
        return BackendNet(net, Ran(name, precision, str(dev)), batch_size, False, 1)
    if name == "onnxruntime":
        net = onnx_backend.onnx_net(model, layer, precision, batch_size, cache_dir,
                                    digest=digest)
        return BackendNet(net, Ran(name, precision, str(dev)), batch_size, False, 1)
    channels_last = prefers_channels_last(dev)
    if name == "compile":
        net, ok = compiled_net(model, layer, precision, batch_size, channels_last)
        if ok:
            return BackendNet(net, Ran(name, precision, str(dev)), batch_size,
                              channels_last)
    net = eager_net(model, layer, precision)
    return BackendNet(net, Ran("torch", precision, str(dev)), None, channels_last)


class BackendReadout:
    """Readout (B, C, H, W) -> (B, T) of ``targets`` through a :class:`BackendNet`."""

    def __init__(self, net: BackendNet, layer: str, targets: Sequence[int],
                 device: torch.device) -> None:
        self.net, self.layer = net, layer
        self.idx = torch.as_tensor(list(targets), dtype=torch.long, device=device)  # (T,)
        self.runtime, self.channels_last = net.runtime, net.channels_last
        self.fixed_batch = net.fixed_batch is not None
        self.torch_threads = net.torch_threads

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        out = self.net(b).to(self.idx.device).float()  # (B, K) or (B, ch)
        if self.layer == "output":
            out = torch.softmax(out, dim=1)  # exact: the same fp32 softmax as eager torch
        return out[:, self.idx]  # (B, T)


def build_readout(model: Any, layer: str, targets: Sequence[int], *, backend: str = "auto",
                  precision: str = "fp32", batch_size: int = 4,
                  cache_dir: Path | str | None = None) -> BackendReadout:
    """The readout of ``layer`` (output, logits or a module name) for ``targets`` on the
    chosen backend; ``.runtime`` says which backend and precision run it."""
    net = build_net(model, layer, backend=backend, precision=precision,
                    batch_size=batch_size, cache_dir=cache_dir)
    return BackendReadout(net, layer, targets, model.device)


__all__ = ["BACKENDS", "BackendNet", "BackendReadout", "Ran", "build_net",
           "build_readout", "native_bf16", "net_for", "precision_error", "resolve_backend",
           "resolve_precision", "torch_threads", "within_bar"]
