"""One error shape on every surface, and the one middleware that guarantees it.

Every failure becomes `{"status_code", "message", "detail"}` with its status. Code below
the handlers raises the domain errors of schemas/errors.py; `STATUS` below is the one
place that says which HTTP status each kind is. Handlers and this web layer may raise
`ApiError` with a status of their own choosing. The API and the gateway both install
`error_middleware`: the API with request ids, the gateway (whose hot path skips them) with
a `render` that adds the fields of TEI's and OpenAI's error shapes.
"""

import functools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from redis.exceptions import RedisError

from db.errors import DatabaseError
from schemas.errors import (
    Conflict,
    Forbidden,
    GreenroomError,
    Invalid,
    Malformed,
    NotFound,
    RateLimited,
    RetryLater,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedType,
    UpstreamTimeout,
    UpstreamUnreachable,
)

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The answer to a failure: (request, status, message, detail) -> the error body's response.
Render = Callable[[web.Request, int, str, Any], web.Response]
# The same, bound to one request: (status, message, detail) -> the response.
RenderAt = Callable[[int, str, Any], web.Response]


class ApiError(Exception):
    """A client-visible error: raised below the handlers, rendered by the middleware."""

    def __init__(self, status: int, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers or {}


# The HTTP status of each kind of domain error (the first match along the class's MRO).
STATUS: dict[type[GreenroomError], int] = {
    Malformed: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    UnsupportedType: 415,
    Invalid: 422,
    TooManyRequests: 429,
    UpstreamUnreachable: 502,
    Unavailable: 503,
    UpstreamTimeout: 504,
}


def as_api_error(exc: GreenroomError) -> ApiError:
    """The status, body fields and headers a domain error is answered with."""
    status = next((STATUS[k] for k in type(exc).__mro__ if k in STATUS), 500)
    headers: dict[str, str] = {}
    if isinstance(exc, RetryLater) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, RateLimited):
        headers.update(exc.limits)
    if isinstance(exc, Unauthorized) and exc.challenge is not None:
        headers["WWW-Authenticate"] = exc.challenge
    return ApiError(status, exc.message, exc.detail, headers)


def json_error(request: web.Request, status: int, message: str,
               detail: Any = None) -> web.Response:
    """The error body every surface answers with (the API's `render`)."""
    body = {"status_code": status, "message": message, "detail": detail}
    return web.json_response(body, status=status)


def _from_http_exception(exc: web.HTTPException, render: RenderAt) -> web.Response:
    if exc.status < 400:
        return exc  # redirects and the like pass through
    if exc.content_type == "application/json" and exc.text:
        try:
            if "status_code" in json.loads(exc.text):
                return web.Response(status=exc.status, text=exc.text,
                                    content_type="application/json", headers=exc.headers)
        except ValueError:
            pass
    message = exc.reason
    if exc.status == 413:
        message = "request body is too large"
    return with_allow(render(exc.status, message, None), exc)


def with_allow(response: web.Response, exc: web.HTTPException) -> web.Response:
    """A 405 keeps the methods the resource takes in `Allow` (RFC 9110, section 15.5.6)."""
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


# A header value fit to echo or pass on: visible ASCII and spaces, of a sane length (aiohttp
# hands a server any UTF-8; review L2: a UTF-8 X-Request-Id was a 500 at the gateway).
HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,256}")


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-Id when fit to echo; else a fresh one."""
    given = request.headers.get("X-Request-Id")
    return given if given and HEADER_VALUE.fullmatch(given) else uuid4().hex


def answer_failure(exc: Exception, render: RenderAt, path: str, method: str,
                   request_id: str | None) -> web.Response:
    """The response to a failure of the handler of `method path`, as `render` (its error
    body, bound to the request) makes it: a domain error's status and headers, an HTTP
    exception's, 503 for Redis down, else a 500 logged with its stack. Called from inside
    the `except` that caught `exc` (the log line takes its traceback from there)."""
    if isinstance(exc, GreenroomError):
        if isinstance(exc, DatabaseError):  # db.errors.DatabaseUnavailable: a 503
            log.warning("database_unavailable", path=path)
        exc = as_api_error(exc)
    if isinstance(exc, ApiError):
        response = render(exc.status, exc.message, exc.detail)
        response.headers.update(exc.headers)  # Retry-After, WWW-Authenticate
        return response
    if isinstance(exc, web.HTTPException):
        return _from_http_exception(exc, render)
    if isinstance(exc, RedisError):
        log.warning("redis_unavailable", path=path)
        return render(503, "queue unavailable, try again shortly", None)
    log.exception("unhandled_error", path=path, method=method)
    detail = {"request_id": request_id} if request_id is not None else None
    return render(500, "internal error", detail)


def error_middleware(render: Render = json_error, *, request_ids: bool = True) -> Middleware:
    """Every failure as the JSON error body `render` makes. With `request_ids`, each request
    gets an id (the caller's X-Request-Id when fit to echo), bound to its log lines and sent
    back in X-Request-Id; a 500 carries it in its detail."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request_ids:
            try:
                return await handler(request)
            except Exception as exc:
                return answer_failure(exc, functools.partial(render, request), request.path,
                                      request.method, None)
        request_id = request_id_of(request)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            response = await handler(request)
        except Exception as exc:
            response = answer_failure(exc, functools.partial(render, request), request.path,
                                      request.method, request_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
        response.headers["X-Request-Id"] = request_id
        return response

    return errors
