"""The library API: ``pda.explain(image, model=..., **params)``, the CLI's explanation.

``pda explain`` is a thin shell around :func:`explain` (it adds the progress bar, the
messages and the files), so the library and the CLI run one code path with one set of
defaults: the deployment's settings (``PDA_*``: backend ``auto``, the device, the sampler
statistics, the converted-graph cache) and :class:`pda.params.ExplainParams` (fit
``squash``, target ``top3``, faithfulness scores on, ...). ``pda explain DIR`` (many
images) runs :func:`explain_many`, which loads the model once for them all.

This module imports torch; ``import pda`` does not (``pda.explain`` loads it on first use).
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError
from torch import nn

from .costs import check_job
from .document import cli_files, result_document, stored_files, with_grids
from .engine import cache as sampler_cache
from .engine.device import auto_batch_size, resolve_device
from .engine.explain import Explanation
from .engine.explain import explain as engine_explain
from .engine.inputs import model_input, to_uint8
from .engine.stats import get_stats
from .errors import InvalidParameterError
from .images import check_min_side, original_size
from .models.registry import LoadedModel, get_model
from .params import ExplainParams, plan, with_preset
from .problems import invalid, to_problem
from .runtime import COMPILE_DEPRECATED, Runtime
from .settings import Settings, get_settings

ImageSource = str | Path | bytes | Image.Image
ModelSource = str | Path | nn.Module | LoadedModel
Progress = Callable[[int, int], None]


@dataclass
class Result:
    """One explanation: the maps, the prediction and the result document."""

    explanation: Explanation
    #: the contract's result document without its grids (:attr:`result` adds them)
    document: dict[str, Any]
    model: LoadedModel
    photo: Image.Image  # the image as given (RGB)
    x: torch.Tensor  # (3, H, W) in [0, 1]: the input as the model saw it

    @property
    def relevance(self) -> np.ndarray:
        """The maps, (T, H, W) float32: bits of evidence for each target (red > 0)."""
        return self.explanation.relevance

    @property
    def prediction(self) -> list[dict[str, Any]]:
        """Top-5 classes of the unmodified input: class_index, label, probability."""
        return self.explanation.prediction

    @property
    def targets(self) -> list[int]:
        return self.explanation.targets

    @property
    def labels(self) -> list[str]:
        return self.explanation.labels

    @property
    def result(self) -> dict[str, Any]:
        """The result document with one H x W grid per target (the CLI's ``result.json``,
        the API's ``/relevance``)."""
        return with_grids(self.document, self.relevance)

    def files(self, scale: str = "shared") -> dict[str, bytes]:
        """``result.json``, ``relevance.npy``, ``input.png`` and ``overlay-<target>.png``,
        rendered as the CLI writes them and the API serves them."""
        stored = stored_files(self.explanation, to_uint8(self.x), self.photo, self.document)
        return cli_files(stored, scale=scale)

    def save(self, out: str | Path, scale: str = "shared") -> Path:
        """Write :meth:`files` into the folder ``out`` (created); returns it."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files(scale).items():
            (folder / name).write_bytes(data)
        return folder


def explain(
    image: ImageSource,
    model: ModelSource | None = None,
    *,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    preset: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    compile: bool = False,
    sampler_stats: str | Path | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
    settings: Settings | None = None,
    **params: Any,
) -> Result:
    """Explain ``model``'s decision on ``image``, exactly as ``pda explain`` does.

    ``image``: a path, the file's bytes or a PIL image. ``model``: a built-in name
    (default ``PDA_DEFAULT_MODEL``), a model file (``NAME.pt2``/``.pt`` with its sidecar)
    or a ``torch.nn.Module`` taking normalised input, with ``input_size=(H, W)``,
    ``mean`` and ``std`` (per RGB channel, for pixels in [0, 1]) and optional ``labels``.
    ``params`` are :class:`pda.params.ExplainParams` fields (``window``, ``stride``,
    ``samples``, ``target``, ``layer``, ``fit``, ``faithfulness``, ...); ``preset="paper"``
    fills in the paper's settings. The runtime options default to the settings, as on
    the CLI: ``backend`` ``PDA_BACKEND`` (``auto``), ``device``, ``precision``,
    ``batch_size`` (automatic) and ``sampler_stats``. ``progress(done, total)`` is called
    with forward passes; ``announce`` receives the one-line plan before the sweep.

    Raises :class:`pda.errors.PDAError` subclasses for anything the caller can fix.
    """
    settings = settings or get_settings()
    checked = explain_params(params, preset)
    runtime = Runtime.from_settings(settings, backend=backend, precision=precision,
                                    batch_size=batch_size, device=device)
    if compile:
        warnings.warn(f"compile=True: {COMPILE_DEPRECATED}", FutureWarning, stacklevel=2)
        runtime = runtime.replace(backend="compile")
    # the explicit device only: a caller's module stays where it is unless asked (a name
    # or file loads on runtime.device, which is this or PDA_DEVICE)
    loaded = load(model, settings, input_size=input_size, mean=mean, std=std, labels=labels,
                  device=device)
    # a caller's module: dropout and batch-norm statistics off while explaining, and back
    # to training mode after (registry models are in eval mode for good)
    was_training = isinstance(model, nn.Module) and model.training
    try:
        _eval(loaded.module)
        return _run(image, loaded, checked, settings, runtime, sampler_stats=sampler_stats,
                    progress=progress, announce=announce)
    finally:
        if was_training:
            loaded.module.train(True)


@dataclass
class Item:
    """One image of :func:`explain_many`: its result, or why it failed.

    ``index`` is the image's position in the input, ``image`` the input as given;
    exactly one of ``result`` and ``error`` is set. ``error`` is the RFC 9457 problem
    document of the failure (pda.problems.to_problem: an image that does not decode is
    415 ``/problems/unsupported-image``, one too small 422, a bug a 500 naming its class),
    ``exception`` the exception itself (to re-raise, or for its traceback).
    ``seconds``: the item's wall time, decoding and rendering of the document included."""

    index: int
    image: ImageSource
    result: Result | None
    error: dict[str, Any] | None
    exception: BaseException | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.result is not None


def explain_many(
    images: Iterable[ImageSource],
    model: ModelSource | None = None,
    *,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    preset: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    sampler_stats: str | Path | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
    settings: Settings | None = None,
    **params: Any,
) -> Iterator[Item]:
    r"""Explain each of ``images`` with one model and one set of parameters, yielding an
    :class:`Item` per image as it finishes (in input order: one image at a time, each
    using every core).

    The arguments are :func:`explain`'s. The model is loaded (and converted for its
    backend) once, before the first image, and reused for every image.

    Failures: a mistake that concerns every image (a bad parameter, an unknown model, a
    window larger than the model's input, a job this machine cannot run) raises here,
    at the call, before any work. A failure of one image (a corrupt, empty or too-small
    file, or anything else its explanation raises) is yielded as a failed :class:`Item`
    and the loop goes on with the next image: one bad photo in a folder of hundreds
    should not cost the others, and the caller sees every outcome (the CLI's
    ``summary.json``). Only what is not an ``Exception`` (``KeyboardInterrupt``) stops it.

    ``progress(done, total)`` counts forward passes over all the images: ``total`` is
    the planned passes per image times the number of images (``images`` is read into a
    list up front; an item whose sweep reports another total, a drill-down's, corrects
    it), so one bar and its ETA cover the whole batch. ``announce`` receives the first image's plan.
    """
    settings = settings or get_settings()
    checked = explain_params(params, preset)
    runtime = Runtime.from_settings(settings, backend=backend, precision=precision,
                                    batch_size=batch_size, device=device)
    loaded = load(model, settings, input_size=input_size, mean=mean, std=std, labels=labels,
                  device=device)
    # the passes each image's sweep reports (the exact sweep's unmodified-image pass is
    # not among them: pda.engine.explain); plan() also checks that the window fits
    each = plan(checked, loaded.input_size)["forward_passes"] - (checked.drilldown is None)
    check_job(checked, loaded.input_size, memory_bytes=settings.worker_memory_bytes,
              cache_bytes=settings.sampler_cache_bytes,
              stats_path=sampler_stats or settings.sampler_stats)
    sources = list(images)
    return _items(sources, loaded, checked, settings, runtime, each,
                  was_training=isinstance(model, nn.Module) and model.training,
                  sampler_stats=sampler_stats, progress=progress, announce=announce)


def _items(sources: list[ImageSource], loaded: LoadedModel, params: ExplainParams,
           settings: Settings, runtime: Runtime, each: int, *, was_training: bool,
           sampler_stats: str | Path | None, progress: Progress | None,
           announce: Callable[[str], None] | None) -> Iterator[Item]:
    ended = 0  # passes of the items that have ended (a failed one: as planned)
    try:
        _eval(loaded.module)
        for index, source in enumerate(sources):
            later = each * (len(sources) - index - 1)  # planned passes of the items after
            current = [each]  # this item's total, as its sweep reports it

            def item_progress(done: int, t: int, base: int = ended, later: int = later,
                              current: list[int] = current) -> None:
                current[0] = t or current[0]
                if progress is not None:
                    progress(base + done, base + current[0] + later)

            start = time.perf_counter()
            try:
                result = _run(source, loaded, params, settings, runtime,
                              sampler_stats=sampler_stats, progress=item_progress,
                              announce=announce if index == 0 else None)
            except Exception as exc:  # this image's failure, not the batch's
                item = Item(index, source, None, to_problem(exc), exc,
                            time.perf_counter() - start)
            else:
                item = Item(index, source, result, None, None, time.perf_counter() - start)
            ended += current[0]
            if progress is not None:
                progress(ended, ended + later)
            yield item
    finally:
        if was_training:
            loaded.module.train(True)


def explain_params(given: dict[str, Any], preset: str | None = None) -> ExplainParams:
    """The parameters from ``given`` fields and a preset; a bad value is an
    :class:`InvalidParameterError` naming the field (the CLI prints it as ``--field``)."""
    try:
        return ExplainParams(**with_preset(given, preset))
    except ValidationError as exc:
        raise invalid(exc) from None


def load(model: ModelSource | None, settings: Settings, *, input_size: Sequence[int] | None
         = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
         labels: Sequence[str] | None = None, device: str | None = None) -> LoadedModel:
    """A name or file through the process's model cache; a module wrapped as it is now."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return _wrap(model, input_size, mean, std, labels, device)
    if input_size is not None or mean is not None or std is not None or labels is not None:
        raise InvalidParameterError("input_size, mean, std and labels go with a torch.nn."
                                    "Module; a model name or file brings its own", field="model")
    dev = resolve_device(device or settings.device)
    return get_model(str(model or settings.default_model), dev, settings)


def _wrap(module: nn.Module, input_size: Sequence[int] | None, mean: Sequence[float] | None,
          std: Sequence[float] | None, labels: Sequence[str] | None, device: str | None
          ) -> LoadedModel:
    if input_size is None or mean is None or std is None:
        raise InvalidParameterError("a torch.nn.Module needs input_size=(H, W), mean=(R, G, "
                                    "B) and std=(R, G, B) (its normalisation of pixels in "
                                    "[0, 1])", field="model")
    if len(input_size) != 2 or len(mean) != 3 or len(std) != 3:
        raise InvalidParameterError("input_size is (H, W); mean and std have 3 values",
                                    field="model")
    first = next(iter(module.parameters()), None)
    here = first.device if first is not None else torch.device("cpu")
    dev = resolve_device(device) if device else here
    if dev != here:
        module.to(dev)
    # no memo across calls: a fresh wrapper keys its converted graphs on the weights as
    # they are now (the disk cache makes an unchanged module's next call cheap)
    wrapped = LoadedModel(type(module).__name__, module, (int(input_size[0]),
                          int(input_size[1])), tuple(mean), tuple(std), [], dev,  # type: ignore[arg-type]
                          "module", hookable=True)
    was_training = module.training
    _eval(module)
    try:
        out = wrapped(torch.rand(1, 3, *wrapped.input_size, device=dev))
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise InvalidParameterError("the module must return logits of shape (N, K)",
                                    field="model")
    K = int(out.shape[1])
    if labels is not None and len(labels) != K:
        raise InvalidParameterError(f"{len(labels)} labels for a module with {K} logits",
                                    field="labels")
    wrapped.labels = list(labels) if labels is not None else [f"class {i}" for i in range(K)]
    return wrapped


def _eval(module: nn.Module) -> None:
    try:
        module.eval()
    except NotImplementedError:  # exported programs refuse .eval(); the registry set it
        pass


def _image_source(image: ImageSource) -> str | Path | bytes:
    if isinstance(image, Image.Image):  # through the same decoder as files and uploads
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    return image


def _run(image: ImageSource, model: LoadedModel, params: ExplainParams, settings: Settings,
         runtime: Runtime, *, sampler_stats: str | Path | None, progress: Progress | None,
         announce: Callable[[str], None] | None) -> Result:
    n = plan(params, model.input_size)  # the window fits the input
    # the API's check at submit, before any work here: a sampler that cannot finish on
    # this deployment's workers is a one-line error, not minutes and a MemoryError
    check_job(params, model.input_size, memory_bytes=settings.worker_memory_bytes,
              cache_bytes=settings.sampler_cache_bytes,
              stats_path=sampler_stats or settings.sampler_stats)
    sampler_cache.configure(settings.sampler_cache_bytes, settings.sampler_cache_dir,
                            settings.sampler_disk_bytes)
    given = model_input(_image_source(image), model.input_size, params.fit,
                        max_pixels=settings.max_image_pixels)
    photo, x, crop = given.photo, given.x, given.crop
    check_min_side(original_size(photo))
    if params.hidden:
        model.get_layer(params.layer)  # fail before any work on an unknown layer
    stats = get_stats(str(sampler_stats) if sampler_stats else settings.sampler_stats)
    batch = runtime.batch_size or auto_batch_size(model.device, model.input_size, model)
    runtime = runtime.replace(batch_size=batch)
    if announce is not None:
        announce(f"pda: {model.name} on {model.device} ({runtime.backend} backend), "
                 f"{n['windows']} windows, "
                 f"{'at most ' if params.drilldown is not None else ''}{n['forward_passes']} "
                 f"forward passes, batch {batch}")
    expl = engine_explain(model, x, params, stats, runtime, progress=progress)
    doc = result_document(expl, model_name=model.name, input_size=model.input_size,
                          image_size=original_size(photo), crop_box=crop, params=params,
                          num_classes=model.num_classes)
    return Result(explanation=expl, document=doc, model=model, photo=photo, x=x)

