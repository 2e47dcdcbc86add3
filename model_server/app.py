"""The HTTP app: ``create_app(settings)``, its routes and its error middleware."""

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import numpy as np
import orjson
import structlog
from aiohttp import web

from model_server import __version__, budget, simulated_capacity
from model_server.backends import Embedder, Embeddings, normalize_rows
from model_server.batcher import Batcher
from model_server.config import GATEWAY_SECRET_HEADER, Settings
from model_server.embedding import (
    DecodeRequest,
    EmbedAllRequest,
    EmbedRequest,
    OpenAIEmbeddingRequest,
    TeiInputs,
    TokenizeRequest,
    as_inputs,
    as_texts,
    embed_texts,
    openai_body,
    parse_body,
    tei_body,
)
from model_server.errors import (
    DeadlineExceeded,
    InvalidRequest,
    MalformedRequest,
    ModelServerError,
    NotFromGateway,
    NotReady,
    PayloadTooLarge,
    QueueFull,
    ShuttingDown,
    tei_error_type,
)
from model_server.lanes import TOKENS_HEADER
from model_server.lifecycle import (
    Loader,
    ModelState,
    load_and_warm,
    load_backend,
    loaded_frameworks,
)
from model_server.metrics import Metrics
from model_server.tokens import check_ids, texts_from, token_vectors, tokenizer_for

STATE = web.AppKey("state", ModelState)
Tei = TypeVar("Tei", bound=TeiInputs)
LOADER: web.AppKey[Loader] = web.AppKey("loader")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger("model_server")
request_log = structlog.get_logger("model_server.requests")


def create_app(settings: Settings, loader: Loader = load_backend) -> web.Application:
    """The app; the model loads in the background once the app starts."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[http_middleware,
                     *simulated_capacity.middlewares(settings, lambda r: r.app[STATE].metrics)],
    )
    app[STATE] = ModelState(settings=settings, metrics=Metrics())
    app[LOADER] = loader
    app.cleanup_ctx.append(_model_context)
    setup_routes(app)
    return app


def setup_routes(app: web.Application) -> None:
    """TEI's HTTP surface for embedding models."""
    app.router.add_post("/", embed)  # TEI's compatibility route: an embedding model embeds
    app.router.add_post("/embed", embed)
    app.router.add_post("/embed_all", embed_all)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/decode", decode)
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


def _tei_options(body: TeiInputs) -> None:
    """What TEI accepts and this server cannot do is a 422, not silently ignored."""
    if body.truncation_direction.lower() != "right":
        raise InvalidRequest("truncation_direction `left` is not supported; use `right`")
    if body.prompt_name is not None:
        raise InvalidRequest(f"prompt_name {body.prompt_name!r}: this model has no prompts")


async def _tei_texts(request: web.Request,
                     model: type[Tei]) -> tuple[Tei, Embedder, Batcher, list[str]]:
    """What /embed and /embed_all share: the body, its TEI options checked, the ready
    backend and batcher, and the inputs as texts."""
    settings = request.app[STATE].settings
    body = await parse_body(request, model, settings.max_body_bytes)
    _tei_options(body)
    inputs = as_inputs(body.inputs, "inputs", settings.max_client_batch_size)
    backend, batcher = request.app[STATE].require_ready()
    return body, backend, batcher, texts_from(backend, inputs, "inputs")


async def embed(request: web.Request) -> web.Response:
    """TEI's POST /embed (and POST /): one pooled vector per input."""
    body, backend, batcher, texts = await _tei_texts(request, EmbedRequest)
    settings = request.app[STATE].settings
    await budget.check_embed(backend, texts, truncate=body.truncate is not False,
                             dimension=backend.dimension,
                             max_tokens=settings.max_request_tokens,
                             max_floats=settings.max_response_floats)
    result = await embed_texts(backend, batcher, texts, truncate=body.truncate is not False,
                               headers=request.headers)
    vectors = result.unit_vectors() if body.normalize else result.vectors
    return _counted(_json(tei_body(vectors)), result)


async def embed_all(request: web.Request) -> web.Response:
    """TEI's POST /embed_all: every token's vector, per input."""
    body, backend, batcher, texts = await _tei_texts(request, EmbedAllRequest)
    if body.truncate is False:
        await _refuse_over_long(backend, texts)
    settings = request.app[STATE].settings
    await budget.check_embed_all(backend, texts, max_tokens=settings.max_request_tokens,
                                 max_floats=settings.max_response_floats)
    # On the batcher's compute thread, within its queue_limit (429 past it).
    rows = await batcher.run_alone(len(texts), partial(token_vectors, backend, texts))
    return _json(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY))


async def _refuse_over_long(backend: Embedder, texts: list[str]) -> None:
    counts = await asyncio.to_thread(backend.count_tokens, texts)
    for index, count in enumerate(counts):
        if count > backend.max_input_length:
            raise PayloadTooLarge(
                f"input {index} is {count} tokens long, more than the maximum of "
                f"{backend.max_input_length}; send truncate=true to truncate it",
                {"index": index, "tokens": count, "max_input_length": backend.max_input_length})


async def tokenize(request: web.Request) -> web.Response:
    """TEI's POST /tokenize: each input's tokens with their ids and character offsets."""
    state = request.app[STATE]
    settings = state.settings
    body = await parse_body(request, TokenizeRequest, settings.max_body_bytes)
    if body.prompt_name is not None:
        raise InvalidRequest(f"prompt_name {body.prompt_name!r}: this model has no prompts")
    texts = as_texts(body.inputs, "inputs", settings.max_client_batch_size)
    backend, _ = state.require_ready()
    tokenizer = tokenizer_for(backend)
    await budget.check_tokenize(backend, texts, max_tokens=settings.max_request_tokens)

    def tokenize_all() -> list[list[dict[str, Any]]]:
        return [[token.as_json() for token in tokenizer.tokenize(text, body.add_special_tokens)]
                for text in texts]

    rows = await asyncio.to_thread(tokenize_all)  # off the event loop
    return _json(orjson.dumps(rows))


async def decode(request: web.Request) -> web.Response:
    """TEI's POST /decode: token ids back to text, one string per list of ids."""
    state = request.app[STATE]
    settings = state.settings
    body = await parse_body(request, DecodeRequest, settings.max_body_bytes)
    batch: list[list[int]] = (body.ids if isinstance(body.ids[0], list)
                              else [body.ids])
    batch = as_texts(batch, "ids", settings.max_client_batch_size)
    backend, _ = state.require_ready()
    tokenizer = tokenizer_for(backend)
    for index, ids in enumerate(batch):
        check_ids(tokenizer, ids, f"ids.{index}")
    texts = [tokenizer.decode(ids, body.skip_special_tokens) for ids in batch]
    return _json(orjson.dumps(texts))


async def openai_embeddings(request: web.Request) -> web.Response:
    """OpenAI's POST /v1/embeddings, as TEI serves it, with `dimensions`."""
    state = request.app[STATE]
    settings = state.settings
    body = await parse_body(request, OpenAIEmbeddingRequest, settings.max_body_bytes)
    inputs = as_inputs(body.input, "input", settings.max_client_batch_size)
    backend, batcher = state.require_ready()
    if body.dimensions is not None and body.dimensions > backend.dimension:
        raise InvalidRequest(
            f"`dimensions` {body.dimensions} is more than the model's {backend.dimension}",
            {"dimensions": body.dimensions, "model_dimension": backend.dimension})
    texts = texts_from(backend, inputs, "input")
    await budget.check_embed(backend, texts, truncate=True,
                             dimension=body.dimensions or backend.dimension,
                             max_tokens=settings.max_request_tokens,
                             max_floats=settings.max_response_floats)
    result = await embed_texts(backend, batcher, texts, truncate=True,
                               headers=request.headers)
    vectors = result.unit_vectors()
    if body.dimensions is not None and body.dimensions < backend.dimension:
        # Matryoshka-style: the first `dimensions` components, renormalised.
        vectors = normalize_rows(np.ascontiguousarray(vectors[:, : body.dimensions]))
    model_id = settings.served_model_id
    return _counted(_json(openai_body(result, vectors, model_id, body.encoding_format)),
                    result)


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
            "batch_lane_every": settings.batch_lane_every,
            "interactive_reserve": settings.batch_lane_reserve,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_request_tokens": settings.max_request_tokens,
            "max_response_floats": settings.max_response_floats,
            "backend": backend.name,
            "quantization": backend.quantization,
            "agreement": backend.agreement and backend.agreement.as_dict(),
            # Which heavy frameworks this process imported: none but onnxruntime and
            # tokenizers on the onnx path (issue 28); module names, nothing configured.
            "frameworks": loaded_frameworks(),
            "version": __version__,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def _counted(response: web.Response, result: Embeddings) -> web.Response:
    """The tokens the model computed, for the gateway's per-key tokens/s limits."""
    response.headers[TOKENS_HEADER] = str(sum(result.token_counts))
    return response


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def error_response(status: int, message: str, detail: Any = None, path: str = "",
                   error_type: str | None = None) -> web.Response:
    """Every error's body: ``{"status_code", "message", "detail"}``, plus the fields of the
    surface's own shape: TEI's ``error``/``error_type``, or on /v1/embeddings the OpenAI
    error TEI serves, ``message``/``code``/``type``."""
    body: dict[str, Any] = {"status_code": status, "message": message, "detail": detail}
    kind = error_type or tei_error_type(status)
    if path == "/v1/embeddings":
        body |= {"code": status, "type": kind}
    elif path:
        body |= {"error": message, "error_type": kind}
    return web.json_response(body, status=status)


_ERROR_TYPES: dict[type[ModelServerError], str] = {
    QueueFull: "Overloaded", DeadlineExceeded: "Backend", NotReady: "Unhealthy",
    ShuttingDown: "Unhealthy",
    MalformedRequest: "Validation", InvalidRequest: "Validation",
    PayloadTooLarge: "Validation", NotFromGateway: "Unauthorized",
}
# Open to anyone who reaches the port: what the worker's and HAProxy's health checks read,
# and the Prometheus series a scraper reads from each replica (request and batch counts;
# no input, vector or name of a model in them).
OPEN_PATHS = frozenset({"/health", "/metrics"})



@web.middleware
async def http_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request, and map every failure to a JSON error body, never a
    stack trace. One middleware rather than two: each layer costs the event loop."""
    state = request.app[STATE]
    metrics = state.metrics
    started = time.perf_counter()
    metrics.handling += 1
    try:
        response = await _answer(request, handler)
    finally:
        metrics.handling -= 1
    if state.stopping:
        # Once the server is stopping, each answer ends its connection and says so: a
        # client never writes its next request to a connection this server is about to
        # close (aiohttp's shutdown reads such a request and drops it unanswered, and the
        # gateway then fails it: a request a replica read is never sent again).
        response.force_close()
    elapsed = time.perf_counter() - started
    metrics.observe_request(_route_label(request), response.status, elapsed)
    request_id = request.headers.get("X-Request-Id")
    if request_id is not None:  # a request a gateway forwarded: one line, by its ids
        log_request(request, request_id, response.status, elapsed)
    return response


def log_request(request: web.Request, request_id: str, status: int, elapsed: float) -> None:
    """The replica's line of a request (issue 31): the gateway's request id and the W3C
    trace id it passed on, so `greenroom logs MODEL --request ID` finds it."""
    traceparent = request.headers.get("traceparent", "")
    trace_id = traceparent[3:35] if len(traceparent) == 55 else None
    request_log.info("request", request_id=request_id[:128], trace_id=trace_id,
                     path=request.path, status=status, ms=round(elapsed * 1000.0, 2))


def _require_gateway(request: web.Request) -> None:
    """Refuse a request without this replica's secret: only its gateways may use it."""
    secret = request.app[STATE].settings.gateway_secret
    if secret is None or request.path in OPEN_PATHS:
        return
    shown = request.headers.get(GATEWAY_SECRET_HEADER, "")
    if not hmac.compare_digest(shown.encode("latin-1", "replace"),
                               secret.get_secret_value().encode()):
        raise NotFromGateway("this replica answers only Greenroom's gateways")


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _require_gateway(request)
        return await handler(request)
    except ModelServerError as exc:
        return error_response(exc.status, exc.message, exc.detail, request.path,
                              _ERROR_TYPES.get(type(exc)))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _http_message(request, exc), path=request.path)
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        return error_response(500, "internal server error", path=request.path)


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
