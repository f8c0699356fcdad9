"""Domain errors of the service, independent of HTTP.

The service and the store raise these; ``api.app`` maps each class to one HTTP status in a
single exception handler (``STATUS``), so no layer below the routes knows about HTTP. Every
error carries a message for a person and a stable machine-readable ``code``.
"""

from __future__ import annotations

__all__ = [
    "STATUS",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "ServiceError",
    "Unavailable",
    "status_of",
]


class ServiceError(Exception):
    """Base of every error a client may see: ``message`` says what is wrong."""

    default_code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class NotFound(ServiceError):
    """The named study, trial, pipeline or cache entry does not exist."""

    default_code = "not_found"


class Conflict(ServiceError):
    """The request is valid but the resource's state forbids it now (stopped, finished...)."""

    default_code = "conflict"


class InvalidRequest(ServiceError):
    """The request's content is wrong (out of range, unknown name, inconsistent)."""

    default_code = "invalid_request"


class Forbidden(ServiceError):
    """The operator has not allowed this (a pipeline module outside the allow-list)."""

    default_code = "forbidden"


class Unavailable(ServiceError):
    """A dependency (database, cache) cannot serve the request right now."""

    default_code = "unavailable"


STATUS: dict[type[ServiceError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidRequest: 422,
    Forbidden: 403,
    Unavailable: 503,
    ServiceError: 400,
}


def status_of(exc: ServiceError) -> int:
    """The HTTP status of a domain error (the nearest class in ``STATUS``)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400
