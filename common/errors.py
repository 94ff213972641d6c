"""One error hierarchy for lorafarm.

Every error carries an ``error_type`` (a stable snake_case string sent to
clients as ``{"error": ..., "error_type": ...}``). The router maps error
classes to HTTP statuses in one table (``router/errors.py``). Errors raised on
a worker travel back in the job result as their ``error_type`` and are rebuilt
with :func:`error_from_type`.
"""

from __future__ import annotations


class LorafarmError(Exception):
    """Base of every error lorafarm reports to a client."""

    error_type = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


# --- the request itself is wrong -------------------------------------------------


class InvalidRequest(LorafarmError):
    """The body or its parameters are malformed or out of range."""

    error_type = "invalid_request"


class Unauthorized(LorafarmError):
    """An API key is configured and the request did not carry it."""

    error_type = "unauthorized"


# --- the model named cannot be served ---------------------------------------------


class ModelError(LorafarmError):
    """The repo named by the request cannot be served."""


class RepoNotFound(ModelError):
    """No such repo on the Hub (or it is private and we have no access)."""

    error_type = "repo_not_found"


class GatedRepo(ModelError):
    """The repo is gated and the operator did not opt in to gated repos."""

    error_type = "gated_repo"


class PrivateRepo(ModelError):
    """The repo is private and the operator did not opt in to private repos."""

    error_type = "private_repo"


class DisabledRepo(ModelError):
    """The Hub has disabled this repo."""

    error_type = "disabled_repo"


class UnsupportedModel(ModelError):
    """The repo is neither a LoRA nor a text-to-image base served here."""

    error_type = "unsupported_model"


class BaseNotServed(ModelError):
    """The LoRA's base model has no pool here."""

    error_type = "base_not_served"


# --- the adapter's files are unusable ---------------------------------------------


class AdapterError(LorafarmError):
    """The adapter's files cannot be used on its base."""


class UnsafeAdapterFormat(AdapterError):
    """The adapter ships no ``.safetensors`` weights (pickle is never loaded)."""

    error_type = "unsafe_adapter_format"


class AdapterTooLarge(AdapterError):
    """The adapter's file or rank is over the configured cap."""

    error_type = "adapter_too_large"


class AdapterCorrupt(AdapterError):
    """The adapter file cannot be parsed, or holds NaN/Inf values."""

    error_type = "adapter_corrupt"


class AdapterIncompatible(AdapterError):
    """The adapter's keys or shapes do not fit the base it is applied to."""

    error_type = "adapter_incompatible"


# --- the service cannot do it right now -------------------------------------------


class Unavailable(LorafarmError):
    """A dependency is down or busy; the client may retry after ``retry_after`` seconds."""

    error_type = "unavailable"


class NoWorker(Unavailable):
    """No live worker serves the pool."""

    error_type = "no_worker"


class QueueFull(Unavailable):
    """The pool's queue is at its bound."""

    error_type = "queue_full"


class RedisUnavailable(Unavailable):
    """Redis cannot be reached."""

    error_type = "redis_unavailable"


class HubUnavailable(Unavailable):
    """The Hub cannot be reached and nothing is cached for this repo."""

    error_type = "hub_unavailable"


# --- the key is past one of its limits ---------------------------------------------


class Limited(LorafarmError):
    """The API key is past one of its limits; other keys are still served. Retry after ``retry_after``."""


class RateLimited(Limited):
    """The key sent more generation requests than its rate (and burst) allow."""

    error_type = "rate_limited"


class ConcurrencyLimited(Limited):
    """The key has as many unfinished jobs as its concurrency allows."""

    error_type = "concurrency_limited"


class KeyQueueFull(Limited):
    """The key holds its share of the pool's queue bound (``LORAFARM_TENANT_QUEUE_SHARE``)."""

    error_type = "key_queue_full"


class Timeout(LorafarmError):
    """The job did not finish within the wait bound; it has been cancelled."""

    error_type = "timeout"


# --- the job itself ----------------------------------------------------------------


class JobNotFound(LorafarmError):
    """No job with that id (or its result has expired)."""

    error_type = "job_not_found"


class JobNotReady(LorafarmError):
    """The job has no result yet."""

    error_type = "job_not_ready"


class JobCancelled(LorafarmError):
    """The job was cancelled before it ran."""

    error_type = "cancelled"


class JobFailed(LorafarmError):
    """The job failed on every delivery and went to the dead-letter stream."""

    error_type = "job_failed"


class InternalError(LorafarmError):
    """An unexpected failure; the message holds no internals."""

    error_type = "internal_error"


def _all_subclasses(cls: type[LorafarmError]) -> list[type[LorafarmError]]:
    out: list[type[LorafarmError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_CLASSES: list[type[LorafarmError]] = [LorafarmError, *_all_subclasses(LorafarmError)]
ERROR_TYPES: dict[str, type[LorafarmError]] = {cls.error_type: cls for cls in _CLASSES}
# The abstract groups reuse their parent's type; the concrete class must win.
ERROR_TYPES["internal_error"] = InternalError
ERROR_TYPES["unavailable"] = Unavailable


def error_from_type(error_type: str, message: str) -> LorafarmError:
    """Rebuild an error sent as ``error_type`` (e.g. in a job result)."""
    return ERROR_TYPES.get(error_type, InternalError)(message)
