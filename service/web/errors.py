"""One error shape on every surface, and the middleware that guarantees it (DESIGN.md §10)."""

import json
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from db.errors import Unavailable

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
    return error_response(exc.status, message)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to logs; turn every failure into the JSON error body."""
    request_id = request.headers.get("X-Request-Id") or uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
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
