"""The gateway's aiohttp app: the data plane, a process apart from the API.

Stateless: routes come from Postgres (reloaded on the workers' pub/sub message, polled
as a fallback), in-flight counts go to Redis. Any number of copies may run behind any
load balancer; `greenroom gateway --processes N` runs N on one port (SO_REUSEPORT).

The hot routes skip the API's guard: a body on `/serve/{name}/...` is passed through
unread, `/v1/embeddings` reads only its `model` field, and access decisions are cached
(gateway/access.py). Errors keep the one error body and add the fields of the surface's
own shape: TEI's `error`/`error_type` under /serve, OpenAI's (as TEI serves it)
`code`/`type` on /v1/embeddings.
"""

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from db.deployments import Route
from db.pool import create_pool
from edge.auth.authentication import authenticate, require_secret
from edge.auth.locators import deployment_not_found
from edge.auth.principal_cache import principal_cache_ctx
from edge.auth.rules import INFERENCE, PUBLIC
from edge.errors import answer_failure, error_middleware
from edge.keys import PG, SERVING_ROUTES, SETTINGS
from edge.metrics import exposition
from edge.openapi import openapi_json
from edge.route_spec import RouteSpec
from edge.routes import ROUTE_TABLE, register
from gateway import feedback, metrics_access
from gateway.access import AccessCache
from gateway.admission import Admission, Limits
from gateway.dispatch import TEMPLATE as SERVE_TEMPLATE
from gateway.dispatch import ServeIndex
from gateway.hold import Holds
from gateway.keys import ACCESS, ADMISSION, GATEWAY, GATEWAY_REDIS
from gateway.routing import Gateway
from schemas.errors import Invalid, Malformed, tei_error_type
from schemas.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# TEI's routes for embedding models, as a replica serves them: (method, path at the replica).
TEI_POST = ("embed", "embed_all", "tokenize", "decode", "v1/embeddings")
TEI_GET = ("health", "info", "metrics")


# ---- errors in each surface's shape ----


def surface_error(request: web.Request, status: int, message: str,
                  detail: Any = None) -> web.Response:
    """The error body, with TEI's fields under /serve and OpenAI's on /v1/embeddings."""
    return error_at(request.path, status, message, detail)


def error_at(path: str, status: int, message: str, detail: Any = None) -> web.Response:
    """`surface_error` for a request to `path`."""
    body: dict[str, Any] = {"status_code": status, "message": message, "detail": detail}
    if path.startswith("/serve/"):
        body |= {"error": message, "error_type": tei_error_type(status)}
    elif path == "/v1/embeddings":
        body |= {"code": status, "type": tei_error_type(status)}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


# ---- the data-plane routes ----

async def _allowed(request: web.Request, key: str) -> Route:
    """The deployment's route if the caller may use it. A bad token is 401 and a missing or
    unreadable deployment 404 in either order, so no answer tells a private one exists."""
    route = request.app[GATEWAY].lookup(key)
    if route is None:
        if "Authorization" in request.headers:
            await authenticate(request)
        raise deployment_not_found(key)
    if route.access_level != "public" or "Authorization" in request.headers:
        await request.app[ACCESS].check(request, key, route.model_id, route.access_level)
    return route


def _model_of(raw: bytes) -> str:
    """The `model` field of an OpenAI body; the replica validates the rest."""
    if not raw:
        raise Malformed("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Malformed("request body is not valid JSON", str(exc)) from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model:
        raise Invalid("invalid request: model: a deployment name or owner/name is required")
    return model


async def _body(request: web.Request) -> bytes:
    """The request's body. A small one is whole in aiohttp's buffer by the time the handler
    runs, and is taken from it at once (`request.read()` loops, copies and checks the size
    on each chunk); a larger one is read as before, both within `client_max_size` (413)."""
    content = request.content
    if not content.is_eof():
        return await request.read()
    body = content.read_nowait(-1)
    if len(body) > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(request.client_max_size, len(body))
    return body


async def openai_embeddings(request: web.Request) -> web.Response:
    """POST /v1/embeddings: `model` names the deployment (its name or owner/name)."""
    raw = await _body(request)
    route = await _allowed(request, _model_of(raw))
    ticket = await request.app[ADMISSION].admit(request, route.model_id)
    answer = await request.app[GATEWAY].forward(route, "POST", "/v1/embeddings", raw,
                                                request.headers, ticket.deadline, ticket.lane)
    return ticket.settle(answer)


async def serve_anonymous(app: web.Application, route: Route, path: str, op: str,
                          headers: Mapping[str, str], body: bytes) -> web.Response:
    """What `_passthrough("POST", op)` answers a request to `path` without a token for the
    public deployment `route` (gateway/front.py serves those without aiohttp's server):
    the same ticket, forward and error body (the gateway's error middleware's)."""
    try:
        ticket = app[ADMISSION].anonymous(headers)
        answer = await app[GATEWAY].forward(route, "POST", op, body, headers, ticket.deadline,
                                            ticket.lane)
        return ticket.settle(answer)
    except Exception as exc:
        return answer_failure(exc, functools.partial(error_at, path), path, "POST", None)


class EmbeddingsBody(BaseModel):
    """POST /v1/embeddings, for the document: the gateway reads `model`; the replica
    validates the rest (model_server/embedding.py, OpenAI's shape)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="the deployment's name or owner/name")
    input: str | list[str] | list[int] | list[list[int]]


def _passthrough(method: str, path: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        route = await _allowed(request, request.match_info["name"])
        ticket = await request.app[ADMISSION].admit(request, route.model_id)
        body = await _body(request) if method == "POST" else None
        answer = await request.app[GATEWAY].forward(route, method, path, body,
                                                    request.headers, ticket.deadline,
                                                    ticket.lane)
        return ticket.settle(answer)

    name = path.strip("/").replace("/", "_") or "compat"
    handler.__name__ = f"serve_{name}" if method == "POST" else f"serve_{name}_get"
    handler.__doc__ = f"{method} /serve/{{name}}/{path.lstrip('/')}: TEI's {path}, passed through."
    return handler


def _data_plane_specs() -> list[RouteSpec]:
    by_name = _passthrough("POST", "/")
    specs = [
        RouteSpec("POST", "/v1/embeddings", openai_embeddings, INFERENCE, EmbeddingsBody,
                  summary="OpenAI-style embeddings"),
        RouteSpec("POST", "/serve/{name}", by_name, INFERENCE,
                  summary="TEI's compatibility route (POST /), passed through"),
        RouteSpec("POST", "/serve/{name}/", by_name, INFERENCE,
                  summary="TEI's compatibility route, for clients whose base URL is /serve/{name}"),
    ]
    specs += [RouteSpec("POST", f"/serve/{{name}}/{op}", _passthrough("POST", f"/{op}"),
                        INFERENCE, summary=f"TEI /{op}, passed through") for op in TEI_POST]
    specs += [RouteSpec("GET", f"/serve/{{name}}/{op}", _passthrough("GET", f"/{op}"),
                        INFERENCE, summary=f"TEI /{op} of the deployment") for op in TEI_GET]
    return specs


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "gateway": request.app[GATEWAY].id})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: requests, latency and upstream errors per deployment, in flight
    per replica (gateway/metrics.py). Loopback callers only, or GREENROOM_METRICS_TOKEN."""
    metrics_access.check(request, request.app[SETTINGS])
    body = exposition(request.app[GATEWAY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_document(request: web.Request) -> web.Response:
    """The gateway's OpenAPI document, to any origin: the API's /docs page loads it."""
    response = await openapi_json(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


OWN_ROUTES = [
    RouteSpec("GET", "/healthz", healthz, PUBLIC, summary="Liveness of this gateway"),
    RouteSpec("GET", "/metrics", metrics, PUBLIC, summary="This gateway's Prometheus metrics"),
    RouteSpec("GET", "/openapi.json", openapi_document, PUBLIC,
              summary="This gateway's OpenAPI document"),
]


def _register_unguarded(app: web.Application, specs: list[RouteSpec],
                        index: ServeIndex) -> None:
    """Routes that check access themselves (cached), in the route table for the docs and the
    authorisation matrix; those under /serve/{name} in `index` too."""
    for spec in specs:
        route = app.router.add_route(spec.method, spec.path, spec.handler)
        if spec.path.startswith(SERVE_TEMPLATE):
            index.add(spec.method, spec.path, route)
        app[ROUTE_TABLE].append(spec)


# ---- resources ----

async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[PG] = await create_pool(settings.require_database_url(), max_size=10)
    app[GATEWAY_REDIS] = Redis.from_url(settings.require_redis_url(), socket_connect_timeout=1,
                                        socket_timeout=5)
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    gateway = Gateway(app[PG], app[GATEWAY_REDIS], settings.routes_poll_s, secret_key=secret,
                      max_answer_bytes=settings.gateway_max_answer_bytes)
    gateway.holds = Holds(settings.gateway_hold_timeout_s, settings.gateway_hold_max)
    gateway.on_auth_change.append(app[ACCESS].clear)
    gateway.log_requests = settings.gateway_request_log
    gateway.on_auth_change.append(app[ADMISSION].clear)
    await gateway.start()
    app[GATEWAY] = gateway
    app[SERVING_ROUTES] = gateway  # the guard's view of it (edge/guard.py)
    yield
    await gateway.close()
    await app[GATEWAY_REDIS].aclose()
    await app[PG].close()


def create_gateway_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    require_secret(settings)  # it verifies the same tokens the API signs
    # Lighter than the API's: no per-request id on the hot path.
    errors = error_middleware(surface_error, request_ids=False)
    app = web.Application(middlewares=[errors], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[ACCESS] = AccessCache(settings.access_cache_ttl_s)
    app[ADMISSION] = Admission(Limits(settings.gateway_key_requests_per_s,
                                      settings.gateway_key_tokens_per_s),
                               settings.access_cache_ttl_s)
    app[ROUTE_TABLE] = []
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(principal_cache_ctx(GATEWAY_REDIS, settings.access_cache_ttl_s))
    index = ServeIndex()  # first under /serve: one dict look-up for the data plane
    app.router.register_resource(index)
    register(app, feedback.ROUTES)
    _register_unguarded(app, _data_plane_specs(), index)
    register(app, OWN_ROUTES)
    return app
