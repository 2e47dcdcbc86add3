"""The errors the API, the gateway and the `greenroom` command raise below their handlers.

One root, `GreenroomError`, and a kind per way a request can fail (not found, conflict,
invalid, forbidden, ...). Code below the handlers says *what* went wrong; which HTTP
status and JSON error body that becomes is decided in one place, the error middleware
(edge/errors.py, used by the API and the gateway). The `greenroom` command catches
these kinds directly. They live in schemas/ because every process imports schemas/ and
nothing here imports a web framework.
"""

from typing import Any


class GreenroomError(Exception):
    """Root of the domain errors: a message for the caller and an optional detail."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class Malformed(GreenroomError):
    """The request cannot be read, or asks for what its own form rules out."""


class Invalid(GreenroomError):
    """The request is well formed but a value in it is not acceptable."""


class Unauthorized(GreenroomError):
    """No credentials, or credentials that name nobody; `challenge` is the scheme to use."""

    def __init__(self, message: str = "a valid bearer token is required", detail: Any = None,
                 challenge: str | None = None) -> None:
        super().__init__(message, detail)
        self.challenge = challenge


class Forbidden(GreenroomError):
    """The caller is known but may not do this."""


class NotFound(GreenroomError):
    """What the request names does not exist (or the caller may not know it does)."""


class Conflict(GreenroomError):
    """The request clashes with the current state (a name taken, a task running)."""


class TooLarge(GreenroomError):
    """The request's body is past a configured bound."""


class UnsupportedType(GreenroomError):
    """The request's body is of a kind that is not accepted."""


class RetryLater(GreenroomError):
    """A refusal that goes away by itself; `retry_after_s` says when to try again."""

    def __init__(self, message: str, detail: Any = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message, detail)
        self.retry_after_s = retry_after_s


class TooManyRequests(RetryLater):
    """The caller used up an allowance (failed logins) for now."""


class RateLimited(TooManyRequests):
    """An API key used up its requests/s or tokens/s for a model (issue 29); `limits` are
    the `x-ratelimit-*` headers its answer carries."""

    def __init__(self, message: str, detail: Any = None, retry_after_s: int | None = None,
                 limits: dict[str, str] | None = None) -> None:
        super().__init__(message, detail, retry_after_s)
        self.limits = limits or {}


class Unavailable(RetryLater):
    """A part this request needs is not ready (a worker, a replica starting) or cannot be
    reached (Postgres: db.errors.DatabaseUnavailable)."""


class UpstreamTimeout(GreenroomError):
    """A replica did not answer in time."""


class UpstreamUnreachable(GreenroomError):
    """No replica could be reached."""


def tei_error_type(status: int) -> str:
    """TEI's `error_type` for an HTTP status without a more precise one (the model server and
    the gateway's `/serve` routes answer in TEI's error shape)."""
    if status == 429:
        return "Overloaded"
    if status == 503:
        return "Unhealthy"
    return "Backend" if status >= 500 else "Validation"
