"""The HTTP app: ``create_app(settings)``, its routes and its error middleware."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from model_server import __version__
from model_server.backends import load_backend
from model_server.config import Settings
from model_server.embedding import (
    EmbedRequest,
    OpenAIEmbeddingRequest,
    as_texts,
    embed_texts,
    openai_body,
    parse_body,
    tei_body,
)
from model_server.errors import ModelServerError
from model_server.lifecycle import Loader, ModelState, load_and_warm
from model_server.metrics import Metrics

STATE = web.AppKey("state", ModelState)
LOADER: web.AppKey[Loader] = web.AppKey("loader")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger("model_server")


def create_app(settings: Settings, loader: Loader = load_backend) -> web.Application:
    """The app; the model loads in the background once the app starts."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[http_middleware],
    )
    app[STATE] = ModelState(settings=settings, metrics=Metrics())
    app[LOADER] = loader
    app.cleanup_ctx.append(_model_context)
    setup_routes(app)
    return app


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/embed", embed)
    app.router.add_post("/v1/embeddings", openai_embeddings)
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_get("/metrics", metrics)


async def _model_context(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    task = asyncio.create_task(load_and_warm(state, app[LOADER]), name="model-load")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await state.close()


async def embed(request: web.Request) -> web.Response:
    state = request.app[STATE]
    settings = state.settings
    body = await parse_body(request, EmbedRequest, settings.max_body_bytes)
    texts = as_texts(body.inputs, "inputs", settings.max_client_batch_size)
    backend, batcher = state.require_ready()
    result = await embed_texts(backend, batcher, texts, truncate=body.truncate)
    vectors = result.unit_vectors() if body.normalize else result.vectors
    return _json(tei_body(vectors))


async def openai_embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    settings = state.settings
    body = await parse_body(request, OpenAIEmbeddingRequest, settings.max_body_bytes)
    texts = as_texts(body.input, "input", settings.max_client_batch_size)
    backend, batcher = state.require_ready()
    result = await embed_texts(backend, batcher, texts, truncate=True)
    vectors = result.unit_vectors()
    model_id = settings.served_model_id
    return _json(openai_body(result, vectors, model_id, body.encoding_format))


async def health(request: web.Request) -> web.Response:
    request.app[STATE].require_ready()
    return web.json_response({"status": "ok"})


async def info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    settings = state.settings
    backend, _ = state.require_ready()
    return web.json_response(
        {
            "model_id": settings.served_model_id,
            "model_dtype": backend.dtype,
            "dimension": backend.dimension,
            "max_input_length": backend.max_input_length,
            "max_batch_size": settings.max_batch_size,
            "max_batch_wait_ms": settings.max_batch_wait_ms,
            "max_client_batch_size": settings.max_client_batch_size,
            "queue_limit": settings.queue_limit,
            "backend": backend.name,
            "quantization": backend.quantization,
            "agreement": backend.agreement and backend.agreement.as_dict(),
            "version": __version__,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def error_response(status: int, message: str, detail: Any = None) -> web.Response:
    """Every error's body: ``{"status_code", "message", "detail"}``."""
    body = {"status_code": status, "message": message, "detail": detail}
    return web.json_response(body, status=status)


@web.middleware
async def http_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request, and map every failure to a JSON error body, never a
    stack trace. One middleware rather than two: each layer costs the event loop."""
    metrics = request.app[STATE].metrics
    started = time.perf_counter()
    metrics.handling += 1
    try:
        response = await _answer(request, handler)
    finally:
        metrics.handling -= 1
    metrics.observe_request(_route_label(request), response.status, time.perf_counter() - started)
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ModelServerError as exc:
        return error_response(exc.status, exc.message, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _http_message(request, exc))
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        return error_response(500, "internal server error")


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no route for {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    if exc.status == 413:
        return f"request body too large: {exc.text}"
    return exc.reason


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
