"""RFC 9457 problem documents: the one table from exception class to problem, for the API's
responses and a failed job's stored ``error`` alike.

:data:`TABLE` maps each :class:`pda.errors.ProblemError` class to its :class:`Kind` (type
URI, title, status, fixed headers, and which members the document adds); a class not in
the table takes its nearest listed base class's kind (the MRO). :func:`to_problem` turns
any exception into a document; one that maps to nothing (a bug) becomes a 500
``/problems/job-failed`` that names its class and no more (no message, no traceback).

No torch, no HTTP framework here: the workers and the API both use this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import (
    BatchTooLargeError,
    BatchTooManyItemsError,
    CallbackNotAllowedError,
    CallbacksOffError,
    HeadersTooLargeError,
    HTTPStatusError,
    IdempotencyConflictError,
    ImageTooLargeError,
    ImageTooSmallError,
    InternalError,
    InvalidImageError,
    InvalidJobError,
    InvalidParameterError,
    JobAbandonedError,
    JobFailedError,
    JobTooLargeError,
    MalformedFormError,
    MalformedJSONError,
    MalformedRequestError,
    ModelLoadError,
    ModelNotInstalledError,
    NoResultsError,
    NotFinishedError,
    NoWorkerError,
    NoWorkerInTimeError,
    PDAError,
    PredictionFailedError,
    ProblemError,
    QueueFullError,
    RateLimitedError,
    RemoteProblem,
    ResultsDeletedError,
    ResultsExpiredError,
    SamplerLimitError,
    SamplerMemoryError,
    StoreFullError,
    StoreUnavailableError,
    TooManyOpenItemsError,
    TooManyQueuedError,
    UnauthorizedError,
    UnknownBatchError,
    UnknownJobError,
    UnknownModelError,
    UnknownTargetError,
    UnsupportedMediaTypeError,
    UploadTooLargeError,
    WorkerOutOfMemoryError,
)

PROBLEM_JSON = "application/problem+json"
#: seconds a caller waits before retrying a submit to a full store
STORE_FULL_RETRY_AFTER = 60
#: titles of the framework's bare HTTP errors (:class:`pda.errors.HTTPStatusError`)
HTTP_TITLES = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}


@dataclass(frozen=True)
class Kind:
    """What one exception class becomes.

    ``field``: the document names ``field`` (the exception's). ``errors``: it lists
    ``errors`` ([{field, message}]; the exception's own ``errors`` when it brings them,
    else its field and message, and then ``prefix`` makes the detail "field: message").
    """

    type: str
    title: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    field: bool = False
    errors: bool = False
    prefix: bool = False


INVALID = Kind("/problems/invalid-parameter", "Invalid parameters", 422, errors=True,
               prefix=True)

TABLE: dict[type[BaseException], Kind] = {
    # the caller's mistakes (pda.errors.PDAError): any not listed is an invalid parameter
    PDAError: INVALID,
    JobTooLargeError: Kind("/problems/invalid-parameter", "Job too large", 422, errors=True,
                           prefix=True),
    SamplerLimitError: Kind("/problems/sampler-limit", "Sampler set-up too large", 422,
                            errors=True, prefix=True),
    SamplerMemoryError: Kind("/problems/sampler-memory", "Sampler set-up out of memory",
                             422),
    ImageTooSmallError: Kind("/problems/image-too-small", "Image too small", 422,
                             errors=True),
    ImageTooLargeError: Kind("/problems/image-too-large", "Image too large", 413),
    InvalidImageError: Kind("/problems/unsupported-image", "Not a supported image", 415),
    UnknownModelError: Kind("/problems/unknown-model", "Unknown model", 404, field=True),
    ModelNotInstalledError: Kind("/problems/model-not-installed", "Model not installed", 422,
                                 field=True),
    ModelLoadError: Kind("/problems/model-load", "Model cannot be loaded", 422, field=True),
    CallbacksOffError: Kind("/problems/callbacks-off", "Callbacks are off", 422, errors=True),
    CallbackNotAllowedError: Kind("/problems/callback-not-allowed", "Callback URL not allowed",
                                  422, errors=True),
    # the request itself
    UploadTooLargeError: Kind("/problems/upload-too-large", "Upload too large", 413),
    UnsupportedMediaTypeError: Kind("/problems/unsupported-media-type",
                                    "Unsupported media type", 415),
    MalformedFormError: Kind("/problems/malformed-request", "Malformed form", 400),
    MalformedJSONError: Kind("/problems/malformed-request", "Malformed JSON", 400),
    MalformedRequestError: Kind("/problems/malformed-request", "Malformed HTTP request", 400),
    HeadersTooLargeError: Kind("/problems/headers-too-large",
                               "Request header fields too large", 431),
    UnauthorizedError: Kind("/problems/unauthorized", "Unauthorized", 401,
                            headers={"WWW-Authenticate": "Bearer"}),
    RateLimitedError: Kind("/problems/rate-limited", "Too many requests", 429),
    # refusals (pda.errors.Refused); the queue-full wait is what a worker needs to take a
    # few jobs
    QueueFullError: Kind("/problems/queue-full", "Queue full", 503,
                         headers={"Retry-After": "10"}),
    TooManyQueuedError: Kind("/problems/too-many-queued-jobs", "Too many queued jobs", 429,
                             headers={"Retry-After": "5"}),
    IdempotencyConflictError: Kind("/problems/idempotency", "Idempotency-Key reused", 409),
    # batches (POST /v1/batches): the limits name the setting that set them
    BatchTooManyItemsError: Kind("/problems/batch-too-many-items", "Too many images in one "
                                 "batch", 422, errors=True),
    BatchTooLargeError: Kind("/problems/batch-too-large", "Batch too large", 413),
    TooManyOpenItemsError: Kind("/problems/too-many-open-batch-items",
                                "Too many open batch items", 429, headers={"Retry-After": "30"}),
    UnknownBatchError: Kind("/problems/unknown-batch", "Unknown batch", 404),
    # jobs and their results
    UnknownJobError: Kind("/problems/unknown-job", "Unknown job", 404),
    UnknownTargetError: Kind("/problems/unknown-target", "Unknown target", 404),
    NotFinishedError: Kind("/problems/not-finished", "Not finished", 409),
    NoResultsError: Kind("/problems/job-failed", "Job failed", 409),
    ResultsDeletedError: Kind("/problems/gone", "Results deleted", 410),
    ResultsExpiredError: Kind("/problems/gone", "Results expired", 410),
    # predictions
    NoWorkerError: Kind("/problems/no-worker", "No worker", 503),
    NoWorkerInTimeError: Kind("/problems/no-worker", "No worker in time", 503),
    # the store
    StoreFullError: Kind("/problems/store-full", "Store full", 503,
                         headers={"Retry-After": str(STORE_FULL_RETRY_AFTER)}),
    StoreUnavailableError: Kind("/problems/store-unavailable", "Service unavailable", 503,
                                headers={"Retry-After": "5"}),
    # what a failed job or prediction stores as its error (made in the workers)
    InvalidJobError: Kind("/problems/invalid-job", "The job cannot be run", 422),
    JobFailedError: Kind("/problems/job-failed", "Job failed", 500),
    JobAbandonedError: Kind("/problems/job-abandoned", "Job abandoned", 500),
    WorkerOutOfMemoryError: Kind("/problems/out-of-memory", "Worker out of memory", 500),
    PredictionFailedError: Kind("/problems/prediction-failed", "Prediction failed", 500),
    # the API's own failures
    InternalError: Kind("about:blank", "Internal error", 500),
    HTTPStatusError: Kind("about:blank", "Error", 0),  # status and title: the exception's
}
#: what an exception that maps to nothing becomes
UNKNOWN = JobFailedError


def kind_of(exc: BaseException) -> Kind:
    """The table's kind of ``exc``'s class, or of its nearest listed base class."""
    for cls in type(exc).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return TABLE[UNKNOWN]


def status_of(exc: BaseException) -> int:
    if isinstance(exc, RemoteProblem):
        return int(exc.document.get("status", 500))
    if isinstance(exc, HTTPStatusError):
        return exc.http_status
    return kind_of(exc).status


def headers_of(exc: BaseException) -> dict[str, str]:
    """The HTTP headers that go with ``exc``'s problem: the table's, then its own."""
    if not isinstance(exc, ProblemError):
        return {}
    return {**kind_of(exc).headers, **exc.headers}


def unexpected(exc: BaseException) -> str:
    """What a problem says of an exception nobody expected: its class, not its message
    (which can hold paths, tensors, secrets) nor its traceback."""
    return f"an unexpected {type(exc).__name__} occurred"


def to_problem(exc: BaseException, *, instance: str | None = None,
               detail: str | None = None) -> dict[str, Any]:
    """The problem document of ``exc``: type, title, status, detail (``detail`` or the
    message), ``instance`` when given, and the members its kind adds."""
    if isinstance(exc, RemoteProblem):
        body = dict(exc.document)
        if instance:
            body["instance"] = instance
        return body
    if not isinstance(exc, ProblemError):
        exc = UNKNOWN(detail or unexpected(exc))
        detail = None
    kind = kind_of(exc)
    message = str(exc) if detail is None else detail
    extra = dict(exc.extra)
    status, title = kind.status, kind.title
    if isinstance(exc, HTTPStatusError):
        status = exc.http_status
        title = exc.title or HTTP_TITLES.get(status, "Error")
    if kind.errors:
        errors = extra.pop("errors", None)
        if errors is None:
            name = exc.field or "request"
            errors = [{"field": name, "message": message}]
            if kind.prefix:
                message = f"{name}: {message}"
        extra = {"errors": errors, **extra}
    if kind.field and exc.field:
        extra = {"field": exc.field, **extra}
    body: dict[str, Any] = {"type": kind.type, "title": title, "status": status,
                            "detail": message}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def job_problem(exc: BaseException) -> dict[str, Any]:
    """The ``error`` a failed job (or a prediction) stores: type, title, status, detail.

    A missing model stays "model not installed"; any other mistake of the caller found
    only in the worker is "the job cannot be run" (422); a :class:`ProblemError` made
    for a job (job failed, abandoned) is itself; anything else a 500 job failed."""
    if isinstance(exc, ModelNotInstalledError):
        body = to_problem(exc)
    elif isinstance(exc, PDAError):
        body = to_problem(InvalidJobError(str(exc)))
    else:
        body = to_problem(exc)
    return {k: body[k] for k in ("type", "title", "status", "detail")}


def field_errors(exc: Any) -> list[dict[str, str]]:
    """A pydantic ``ValidationError`` (or FastAPI's ``RequestValidationError``, the same
    ``errors()``) as field errors [{field, message}]: the one wording of a bad value for
    the API's bodies, queries and the library's parameters."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        # a check across fields (a model validator) has no location: the field its
        # exception names, if it names one
        named = getattr((err.get("ctx") or {}).get("error"), "field", None)
        out.append({"field": ".".join(loc) or named or "request", "message": msg})
    return out


def invalid(exc: Any) -> InvalidParameterError:
    """:func:`validation_error` of a pydantic validation error (:func:`field_errors`)."""
    return validation_error(field_errors(exc))


def validation_error(errors: list[dict[str, str]]) -> InvalidParameterError:
    """Field errors ([{field, message}], pydantic's) as one invalid-parameter error: the
    first in the detail, all in ``errors``."""
    first = errors[0]
    detail = f"{first['field']}: {first['message']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    field = first["field"] if first["field"] != "request" else None
    return InvalidParameterError(detail, field=field, errors=errors)
