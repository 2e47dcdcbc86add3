"""The model server's exceptions; each HTTP-facing one carries its status code."""

from typing import Any


class ModelServerError(Exception):
    """Root of every error the model server raises on purpose."""

    status = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BackendLoadError(ModelServerError):
    """The configured backend could not be loaded; the process must exit."""


class MalformedRequest(ModelServerError):
    """The body is not valid JSON."""

    status = 400


class InvalidRequest(ModelServerError):
    """The JSON does not match the route's schema."""

    status = 422


class PayloadTooLarge(ModelServerError):
    """Too many inputs, an input too long, or a body too big."""

    status = 413


class QueueFull(ModelServerError):
    """More inputs are queued than the queue limit allows; the client should retry."""

    status = 429


class DeadlineExceeded(ModelServerError):
    """The request's X-Request-Timeout passed before its work was computed: the work was
    dropped, never computed (model_server/lanes.py)."""

    status = 504


class NotReady(ModelServerError):
    """The model is still loading (or failed to load)."""

    status = 503


class ShuttingDown(ModelServerError):
    """The server no longer takes new work."""

    status = 503


class NotFromGateway(ModelServerError):
    """A request without this replica's gateway secret (schemas/replica_auth.py)."""

    status = 401


def tei_error_type(status: int) -> str:
    """TEI's `error_type` for an HTTP status without a more precise one.

    The gateway answers its /serve routes in the same shape with schemas/errors.py's copy:
    the model server imports no other package of Greenroom (its image holds this package
    alone), and tests/model_server/test_wire_contract.py keeps the two equal."""
    if status == 429:
        return "Overloaded"
    if status == 503:
        return "Unhealthy"
    return "Backend" if status >= 500 else "Validation"
