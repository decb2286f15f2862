"""Response schemas, named by role (the OpenAPI document is built from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pda.defaults import PHASES
from pda.params import ExplainParams

#: a link present only once the job has finished: left out (not null) before
_LATER = {"default": None, "exclude_if": lambda v: v is None}


class Progress(BaseModel):
    done: int = Field(description="forward passes done")
    total: int = Field(description="forward passes this job needs")
    fraction: float


class ChunkCount(BaseModel):
    total: int = Field(description="chunks the sweep was split into (PDA_CHUNK_PASSES)")
    done: int = Field(description="chunks whose partial sums are stored")


class PredictionEntry(BaseModel):
    class_index: int
    label: str
    probability: float


class JobParams(ExplainParams):
    """The parameters a job runs with: every field, the preset applied."""

    model_config = ConfigDict(extra="allow")


class ImageMeta(BaseModel):
    """The uploaded photo."""

    model_config = ConfigDict(extra="allow")

    width: int
    height: int
    filename: str | None = None
    bytes: int | None = Field(None, description="size of the upload")


class TargetEntry(BaseModel):
    """One explained class (or channel), with its faithfulness summary when scored."""

    model_config = ConfigDict(extra="allow")

    target: int
    label: str
    faithfulness: dict[str, Any] | None = Field(None, exclude_if=lambda v: v is None)


class JobLinks(BaseModel):
    """Where the job and, once it has finished, its results are."""

    self: str
    relevance: str | None = Field(description="the result document", **_LATER)
    relevance_npy: str | None = Field(description="the grids as .npy", **_LATER)
    input: str | None = Field(description="the model's input as PNG", **_LATER)
    overlays: dict[str, str] | None = Field(description="target -> overlay PNG", **_LATER)


class PreviousAttempt(BaseModel):
    """How the attempt before the current one ended (the job was rerun)."""

    model_config = ConfigDict(extra="allow")

    attempt: int
    ended: Literal["worker_lost", "stalled", "shutdown", "crashed", "message_lost"]
    at: str
    resumed_from: int | None = Field(
        None, description="forward passes already done when this attempt resumed from its "
        "checkpoints", exclude_if=lambda v: v is None)


class PhaseProgress(BaseModel):
    done: int
    total: int
    unit: Literal["steps", "passes"]


class CallbackDelivery(BaseModel):
    """One callback URL of the job, and the delivery of its event (pda.jobs.deliveries)."""

    url: str
    status: Literal["waiting", "pending", "delivered", "failed"] = Field(
        description="waiting: the job has not ended; pending: the event is being delivered "
        "(see next_attempt_at); delivered: a 2xx answer; failed: every attempt failed")
    event_id: str | None = Field(None, description="the event's webhook-id, the same on "
                                 "every attempt")
    type: str | None = Field(None, description="the event: explanation.finished, ...")
    attempts: int = 0
    last_status: int | None = Field(None, description="the HTTP status of the last answer")
    last_error: str | None = Field(None, description="why the last attempt got no answer")
    last_attempt_at: str | None = None
    next_attempt_at: str | None = Field(None, description="when it is tried (again)")
    delivered_at: str | None = None


class ExplanationPublic(BaseModel):
    """A job: its status, progress, parameters, prediction, and links to its results."""

    id: str
    status: Literal["queued", "running", "finished", "failed", "canceled"]
    model: str
    params: JobParams
    progress: Progress
    phase: Literal[PHASES] | None = Field(
        None, description="what the job is doing while queued or running: queued, preparing "
        "(model, image, backend and sampler set-up), sweeping (the windows' forward passes), "
        "scoring (the faithfulness scores), writing (storing the results); null once ended")
    phase_progress: PhaseProgress | None = Field(
        None, description="the phase's own count: preparation steps, or forward passes")
    eta_seconds: float | None = Field(None, description="estimated seconds until finished")
    note: str | None = Field(None, description="why the job may wait, e.g. no worker alive")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = Field(None, description="when the results are deleted")
    attempt: int = 1
    previous_attempt: PreviousAttempt | None = Field(
        None, description="of a rerun job: how the attempt before this one ended")
    image: ImageMeta
    prediction: list[PredictionEntry] | None = None
    targets: list[TargetEntry] | None = None
    error: dict[str, Any] | None = Field(None, description="a problem document when failed")
    links: JobLinks
    chunks: ChunkCount | None = Field(None, description="a split job's chunks (any worker "
                                      "runs each); null when it runs whole on one worker")
    callbacks: list[CallbackDelivery] | None = Field(
        None, description="the callback URLs the job's requests named (callback_url), each "
        "with the delivery of its event; null when none")


class ExplanationEvent(BaseModel):
    """What a callback URL is sent when its job ends: a Standard Webhooks event, signed
    (headers webhook-id, webhook-timestamp, webhook-signature)."""

    type: Literal["explanation.finished", "explanation.failed", "explanation.canceled"]
    timestamp: str = Field(description="when the job ended (ISO 8601, UTC)")
    data: ExplanationPublic = Field(description="the job as GET /v1/explanations/{id} "
                                    "returned it when it ended")


class BatchItem(BaseModel):
    """One image of a batch: its explanation job, or the problem of a refused image."""

    index: int = Field(description="position in the upload (0 = the first image)")
    filename: str = Field(description="the part's file name, or the archive member's path")
    id: str | None = Field(description="its explanation job (GET /v1/explanations/{id}); "
                           "null when the image was refused at submit (see error)")
    status: Literal["queued", "running", "finished", "failed", "canceled"]
    links: JobLinks | None = Field(description="the job's links once it finished")
    error: dict[str, Any] | None = Field(description="the RFC 9457 problem document when "
                                         "the item failed (its image refused, or its job)")


class BatchCounts(BaseModel):
    """Items by status."""

    queued: int
    running: int
    finished: int
    failed: int
    canceled: int


class BatchLinks(BaseModel):
    self: str
    results: str = Field(description="results.zip: every finished item's files, "
                         "summary.json and contact-sheet.png, streamed")
    events: str = Field(description="the batch's event stream (server-sent events)")


class BatchPublic(BaseModel):
    """A batch: its items (each an explanation job) and their progress over all."""

    id: str
    status: Literal["queued", "running", "finished", "canceled"] = Field(
        description="queued: no item started; running; finished: every item ended "
        "(finished, failed or canceled); canceled: DELETE canceled the items not yet ended")
    model: str
    params: dict[str, Any] = Field(description="the explanation parameters, as sent, for "
                                   "every item")
    total: int = Field(description="items in the batch")
    counts: BatchCounts
    progress: Progress = Field(description="forward passes done over all items, of the "
                               "total fixed at submit")
    eta_seconds: float | None = Field(
        description="estimated seconds until every item has ended (interactive work goes "
        "first, other keys' batches share the workers); null once ended, before a worker "
        "measured the model, or with no worker alive")
    created_at: str
    finished_at: str | None = None
    canceled_at: str | None = None
    items: list[BatchItem] = Field(description="in upload order")
    links: BatchLinks
    callbacks: list[CallbackDelivery] | None = Field(
        None, description="the batch's callback URL with the delivery of its event "
        "(batch.finished or batch.canceled); null when none")


class BatchEvent(BaseModel):
    """What a batch's callback_url is sent when it ends (signed like a job's event)."""

    type: Literal["batch.finished", "batch.canceled"]
    timestamp: str = Field(description="when the batch ended (ISO 8601, UTC)")
    data: BatchPublic = Field(description="the batch as GET /v1/batches/{id} returned it "
                              "when it ended")


class LayerPublic(BaseModel):
    name: str = Field(description="module name, for the `layer` parameter")
    type: str
    channels: int = Field(description="channels: the targets of a hidden-layer explanation")
    output_size: list[int] = Field(description="the module's output (C, H, W) at batch 1")


class ModelPublic(BaseModel):
    name: str
    source: str
    available: bool | None = Field(description="weights installed where the workers run "
                                   "(null: not known until a worker reports)")
    input_size: list[int] | None
    num_classes: int | None
    description: str
    default: bool
    install: str | None = Field(None, description="what to install when not available")


class ModelDetail(ModelPublic):
    layers: list[LayerPublic] | None = Field(
        description="hookable layers (null: not known until a worker loads the model file)")


class PredictionPublic(BaseModel):
    model: str
    input_size: list[int]
    prediction: list[PredictionEntry]
    seconds: float


class ModelRef(BaseModel):
    name: str
    input_size: list[int] = Field(description="[H, W]: the grids' size")


class ImageBox(BaseModel):
    model_config = ConfigDict(extra="allow")

    width: int
    height: int
    crop_box: list[int] = Field(description="[left, top, right, bottom] in the photo")


class ExplanationGrid(BaseModel):
    """One target's relevance map."""

    model_config = ConfigDict(extra="allow")

    target: int
    label: str
    unit: Literal["bits", "activation"]
    max_abs: float | None = None
    relevance: list[list[float]] = Field(description="H rows of W values (model-input "
                                         "pixels): positive = evidence for the target")
    faithfulness: dict[str, Any] | None = Field(
        None, description="deletion/insertion AUCs, curves, protocol and random baseline")


class ResultDocument(BaseModel):
    """The result document (docs: the contract's result.json)."""

    model_config = ConfigDict(extra="allow")

    model: ModelRef
    image: ImageBox
    params: dict[str, Any] = Field(description="the parameters as run, with the Laplace "
                                   "correction's train_size and num_classes")
    prediction: list[PredictionEntry]
    explanations: list[ExplanationGrid]
    coverage: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    approximation: dict[str, Any] | None = Field(None, description="drill-down's estimate")
    runtime: dict[str, Any] | None = Field(None, description="backend and precision used")


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str | int] = Field(description="redis: ok or why not; workers: alive")
    workers: dict[str, Any] = Field(description="the workers' summary (alive, busy, ...)")
    mode: Literal["embedded", "redis"]


class ProblemDoc(BaseModel):
    """RFC 9457 problem details; ``errors`` names the fields at fault on 422."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = None
