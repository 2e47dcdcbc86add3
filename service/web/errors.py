"""One error shape on every surface, and the middleware that guarantees it.

Every failure becomes `{"status_code", "message", "detail"}` with its status. Code below
the handlers raises the domain errors of schemas/errors.py; `STATUS` below is the one
place that says which HTTP status each kind is (the gateway's middleware uses it too).
Handlers and this web layer may raise `ApiError` with a status of their own choosing.
"""

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from db.errors import Unavailable
from schemas import errors as domain

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
STATUS: dict[type[domain.GreenroomError], int] = {
    domain.Malformed: 400,
    domain.Unauthorized: 401,
    domain.Forbidden: 403,
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.TooLarge: 413,
    domain.UnsupportedType: 415,
    domain.Invalid: 422,
    domain.TooManyRequests: 429,
    domain.UpstreamUnreachable: 502,
    domain.Unavailable: 503,
    domain.UpstreamTimeout: 504,
}


def as_api_error(exc: domain.GreenroomError) -> ApiError:
    """The status, body fields and headers a domain error is answered with."""
    status = next((STATUS[k] for k in type(exc).__mro__ if k in STATUS), 500)
    headers: dict[str, str] = {}
    if isinstance(exc, domain.RetryLater) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, domain.Unauthorized) and exc.challenge is not None:
        headers["WWW-Authenticate"] = exc.challenge
    return ApiError(status, exc.message, exc.detail, headers)


def error_response(status: int, message: str, detail: Any = None) -> web.Response:
    body = {"status_code": status, "message": message, "detail": detail}
    return web.json_response(body, status=status)


def _from_http_exception(exc: web.HTTPException) -> web.StreamResponse:
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
    return with_allow(error_response(exc.status, message), exc)


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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to logs; turn every failure into the JSON error body."""
    request_id = request_id_of(request)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except domain.GreenroomError as exc:
        error = as_api_error(exc)
        response = error_response(error.status, error.message, error.detail)
        response.headers.update(error.headers)
    except ApiError as exc:
        response = error_response(exc.status, exc.message, exc.detail)
        response.headers.update(exc.headers)
    except web.HTTPException as exc:
        response = _from_http_exception(exc)
    except Unavailable:
        log.warning("database_unavailable", path=request.path)
        response = error_response(503, "database unavailable, try again shortly")
    except RedisError:
        log.warning("redis_unavailable", path=request.path)
        response = error_response(503, "queue unavailable, try again shortly")
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        response = error_response(500, "internal error", {"request_id": request_id})
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    response.headers["X-Request-Id"] = request_id
    return response
