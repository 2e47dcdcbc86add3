"""Scaling routes (issue 14): seed 002's style at the root, and seed 001's under /api/v2."""

from aiohttp import web

from edge.auth.locators import body_field, path_param
from edge.auth.rules import OWNER, READ
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.parsing import idempotency_key
from edge.route_spec import RouteSpec
from schemas.tasks import ScaleRequest, ScaleTaskRequest, TaskKind, TaskResponse
from service.api.bazaar_v2 import MODEL, PREFIX
from service.api.tasks import _LOCATED_TASK, _json, task_model
from service.domain import scaling
from service.keys import REDIS


async def _answer(request: web.Request, replicas: int,
                  key_in_body: str | None = None) -> web.Response:
    header_key = idempotency_key(request)
    call = call_of(request)
    assert call.model is not None
    task, created = await scaling.accept(
        request.app[PG], request.app[REDIS], call.model, replicas, call.principal.user_id,
        key_in_body or header_key, settings=request.app[SETTINGS])
    return _json(task, 202 if created else 200)


async def post_scale(request: web.Request) -> web.Response:
    """Create a scale task (seed 002 body, `config.replicas`): 202 with the pending task.
    The body's `id` is its idempotency key, as on /deploy and /delete."""
    body: ScaleTaskRequest = call_of(request).body
    return await _answer(request, body.config.replicas, body.id)


async def post_v2_scale(request: web.Request) -> web.Response:
    """Scale the serving generation to `replicas`: 202 with the pending scale task."""
    body: ScaleRequest = call_of(request).body
    return await _answer(request, body.replicas)


async def get_scale_task(request: web.Request) -> web.Response:
    return _json(request[_LOCATED_TASK])


ROUTES = [
    RouteSpec("POST", "/scale", post_scale, OWNER, ScaleTaskRequest, TaskResponse,
              body_field("embedding_model_id"), 202, summary="Create a scale task",
              replay_status=200),
    RouteSpec("GET", "/scale/{task_id}", get_scale_task, READ, None, TaskResponse,
              task_model(TaskKind.scale), summary="A scale task"),
    RouteSpec("POST", f"{PREFIX}/{MODEL}/scale", post_v2_scale, OWNER, ScaleRequest,
              TaskResponse, path_param("model_id"), 202, replay_status=200,
              summary="Scale the serving generation to a replica count"),
]
