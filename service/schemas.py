"""Response schemas, named by role (the OpenAPI document is built from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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


class ExplanationPublic(BaseModel):
    """A job: its status, progress, parameters, prediction, and links to its results."""

    id: str
    status: Literal["queued", "running", "finished", "failed", "canceled"]
    model: str
    params: dict[str, Any]
    progress: Progress
    eta_seconds: float | None = Field(None, description="estimated seconds until finished")
    note: str | None = Field(None, description="why the job may wait, e.g. no worker alive")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = Field(None, description="when the results are deleted")
    attempt: int = 1
    previous_attempt: dict[str, Any] | None = Field(
        None, description="of a rerun job: {attempt, ended: worker_lost | stalled | shutdown "
        "| crashed | message_lost, at, resumed_from: the progress it resumed at}")
    image: dict[str, Any] = Field(default_factory=dict)
    prediction: list[PredictionEntry] | None = None
    targets: list[dict[str, Any]] | None = None
    error: dict[str, Any] | None = Field(None, description="a problem document when failed")
    links: dict[str, Any] = Field(default_factory=dict)
    chunks: ChunkCount | None = Field(None, description="a split job's chunks (any worker "
                                      "runs each); null when it runs whole on one worker")


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
