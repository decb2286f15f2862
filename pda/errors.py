"""Named exceptions for everything a caller can get wrong, and for every other way a
request or a job ends in a problem document.

Each message says what was wrong and what is allowed. :mod:`pda.problems` maps each class
to its problem type, title and status (the API's responses and a failed job's ``error``
alike); the CLI maps them to exit codes; the engine just raises them.
"""

from __future__ import annotations

from typing import Any


class ProblemError(Exception):
    """An error that leaves as an RFC 9457 problem document (:func:`pda.problems.to_problem`).

    ``headers`` go with the HTTP response (Retry-After, WWW-Authenticate) on top of the
    table's; ``extra`` are members added to the document (``errors``, ...)."""

    #: which request field the error is about, when there is one (for 422 documents)
    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field
        self.headers = dict(headers or {})
        self.extra = extra


class PDAError(ProblemError):
    """Base class: a problem the caller can fix (bad input, unknown name, ...)."""


class InvalidParameterError(PDAError, ValueError):
    """A parameter is out of range or malformed (window, samples, target, ...)."""


class InvalidImageError(PDAError, ValueError):
    """The input is not a readable image, or one we refuse (format, size, frames)."""


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the configured cap (decompression bombs)."""


class ImageTooSmallError(InvalidImageError):
    """The image is smaller than the minimum side an explanation needs (422)."""

    field = "image"


class UnknownModelError(PDAError, LookupError):
    """No model of that name, or its weights are not available on this installation."""

    field = "model"


class ModelNotInstalledError(UnknownModelError):
    """A known built-in whose weights are not installed where it would run."""

    @classmethod
    def of(cls, name: str, install: str) -> ModelNotInstalledError:
        """The one wording, wherever it is found (API, worker, CLI); ``install`` says how
        to install the weights (:func:`pda.catalog.install_hint`)."""
        return cls(f"model {name!r} is known but its weights are not installed: {install}")


class ModelLoadError(PDAError, RuntimeError):
    """A model file exists but cannot be loaded (corrupt, wrong format, bad sidecar)."""

    field = "model"


class UnknownLayerError(PDAError, LookupError):
    """The requested layer is not a module of the model."""

    field = "layer"


class SamplerStatsError(PDAError, ValueError):
    """A sampler statistics file is missing, unreadable or does not fit."""


class CallbackError(PDAError, ValueError):
    """A ``callback_url`` this server will not call (422)."""

    field = "callback_url"


class CallbacksOffError(CallbackError):
    """A ``callback_url`` sent to a server whose callbacks are off: no PDA_WEBHOOK_SECRET to
    sign with, or no PDA_CALLBACK_ALLOWED_HOSTS."""


class CallbackNotAllowedError(CallbackError):
    """A ``callback_url`` that is malformed or names a host the operator does not allow."""


class SamplerLimitError(InvalidParameterError):
    """A job whose sampler set-up would exceed the worker's memory (PDA_WORKER_MEMORY_BYTES)
    or the set-up time target (pda.costs): refused at submit, naming what to use instead."""


class SamplerMemoryError(PDAError):
    """The sampler's set-up ran out of memory in the worker: deterministic (the same job
    fails the same way again), so never retried."""


class Canceled(Exception):
    """Raised from a progress callback to stop a sweep (not a caller error)."""


class Refused(ProblemError):
    """A request the service turns down for now (capacity, conflicts); the HTTP layer
    maps each kind to its status and Retry-After."""


class QueueFullError(Refused):
    """The global queue cap is reached (PDA_MAX_QUEUE_LENGTH)."""


class TooManyQueuedError(Refused):
    """This caller has PDA_MAX_QUEUED_PER_KEY jobs waiting."""


class IdempotencyConflictError(Refused):
    """An Idempotency-Key reused for a different request."""


class JobTooLargeError(InvalidParameterError):
    """A job that needs more forward passes than PDA_MAX_FORWARD_PASSES."""


class UploadTooLargeError(ProblemError):
    """A request body over PDA_MAX_UPLOAD_BYTES (413)."""

    def __init__(self, limit: int, **kwargs: Any) -> None:
        super().__init__(f"the upload exceeds the limit of {limit} bytes "
                         "(PDA_MAX_UPLOAD_BYTES)", **kwargs)


class UnsupportedMediaTypeError(ProblemError):
    """A request body that is neither multipart/form-data nor JSON (415)."""


class MalformedFormError(ProblemError):
    """A multipart body that cannot be parsed (400)."""


class MalformedJSONError(ProblemError):
    """A JSON body that cannot be parsed (400)."""


class MalformedRequestError(ProblemError):
    """Bytes that are not an HTTP/1.1 request, refused by the protocol layer (400)."""


class HeadersTooLargeError(ProblemError):
    """A request line and header fields over the server's limit (431)."""


class UnauthorizedError(ProblemError):
    """No API key, or not a valid one (401)."""


class RateLimitedError(ProblemError):
    """Over PDA_RATE_LIMIT_PER_MINUTE (429)."""


class UnknownJobError(ProblemError):
    """No such job (or not the caller's) (404)."""


class UnknownTargetError(ProblemError):
    """The job has no overlay for that target (404)."""


class NotFinishedError(ProblemError):
    """The job's results are asked for while it is queued or running (409)."""


class NoResultsError(ProblemError):
    """The job's results are asked for, but it failed (409)."""


class ResultsDeletedError(ProblemError):
    """The job was canceled: its results are deleted (410)."""


class ResultsExpiredError(ProblemError):
    """The job's results expired (PDA_RESULT_TTL_SECONDS) (410)."""


class NoWorkerError(ProblemError):
    """No worker is alive to compute a prediction (503)."""


class NoWorkerInTimeError(NoWorkerError):
    """No worker answered a prediction within PDA_PREDICT_TIMEOUT_SECONDS (503)."""


class StoreFullError(ProblemError):
    """Redis has reached its maxmemory (503)."""


class StoreUnavailableError(ProblemError):
    """Redis is not reachable (503)."""


class HTTPStatusError(ProblemError):
    """A bare HTTP error of the framework (no route, wrong method): its own status."""

    def __init__(self, status: int, message: str, *, title: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.http_status = status
        self.title = title


class InternalError(ProblemError):
    """A bug in the API: an exception nothing else maps (500, logged, never shown)."""


class InvalidJobError(ProblemError):
    """A job the worker cannot run: the caller's mistake found only there (422)."""


class JobFailedError(ProblemError):
    """A job that failed after all its attempts (500)."""


class WorkerOutOfMemoryError(ProblemError):
    """A job that needs more memory than the worker has: deterministic, never retried
    (500: the service accepted it; the submit-time checks should have refused it)."""


class JobAbandonedError(ProblemError):
    """A job whose workers stopped (died, stalled) more often than retries allow (500)."""


class PredictionFailedError(ProblemError):
    """A prediction that crashed in the worker (500)."""


class RemoteProblem(ProblemError):
    """A problem document made elsewhere (a worker's answer), raised again as it is."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__(str(document.get("detail", "")))
        self.document = dict(document)


class BatchTooManyItemsError(InvalidParameterError):
    """A batch with more images than PDA_BATCH_MAX_ITEMS (422)."""


class BatchTooLargeError(ProblemError):
    """A batch request body over PDA_BATCH_MAX_BYTES (413)."""


class TooManyOpenItemsError(Refused):
    """This API key's batches have PDA_BATCH_MAX_OPEN_ITEMS items not yet ended (429)."""


class UnknownBatchError(ProblemError):
    """No such batch (or not the caller's): 404."""
