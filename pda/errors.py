"""Named exceptions for everything a caller can get wrong.

Each message says what was wrong and what is allowed. Only the HTTP layer and the CLI
map these to status codes or exit codes; the engine just raises them.
"""


class PDAError(Exception):
    """Base class: a problem the caller can fix (bad input, unknown name, ...)."""

    #: which request field the error is about, when there is one (for 422 documents)
    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class InvalidParameterError(PDAError, ValueError):
    """A parameter is out of range or malformed (window, samples, target, ...)."""


class InvalidImageError(PDAError, ValueError):
    """The input is not a readable image, or one we refuse (format, size, frames)."""


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the configured cap (decompression bombs)."""


class ImageTooSmallError(InvalidImageError):
    """The image is smaller than the minimum side an explanation needs (422)."""


class UnknownModelError(PDAError, LookupError):
    """No model of that name, or its weights are not available on this installation."""

    field = "model"


class ModelNotInstalledError(UnknownModelError):
    """A known built-in whose weights are not installed where it would run."""


class ModelLoadError(PDAError, RuntimeError):
    """A model file exists but cannot be loaded (corrupt, wrong format, bad sidecar)."""

    field = "model"


class UnknownLayerError(PDAError, LookupError):
    """The requested layer is not a module of the model."""

    field = "layer"


class SamplerStatsError(PDAError, ValueError):
    """A sampler statistics file is missing, unreadable or does not fit."""


class Canceled(Exception):
    """Raised from a progress callback to stop a sweep (not a caller error)."""


class Refused(Exception):
    """A request the service turns down for now (capacity, conflicts); the HTTP layer
    maps each kind to its status and Retry-After."""


class QueueFullError(Refused):
    """The global queue cap is reached (PDA_MAX_QUEUE_LENGTH)."""


class TooManyQueuedError(Refused):
    """This caller has PDA_MAX_QUEUED_PER_KEY jobs waiting."""


class IdempotencyConflictError(Refused):
    """An Idempotency-Key reused for a different request."""
