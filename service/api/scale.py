"""Scaling routes (issue 14): seed 002's style at the root, and seed 001's under /api/v2."""

from aiohttp import web

from edge.auth.locators import body_field, path_param
from edge.auth.rules import OWNER, READ
from edge.errors import ApiError
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.parsing import idempotency_key
from edge.route_spec import RouteSpec
from schemas.tasks import ScaleRequest, TaskKind, TaskRequest, TaskResponse
from service.api.bazaar_v2 import MODEL, PREFIX
from service.api.tasks import _LOCATED_TASK, _json, task_model
from service.domain import scaling
from service.keys import REDIS


async def _answer(request: web.Request, replicas: int) -> web.Response:
    call = call_of(request)
    assert call.model is not None
    task, created = await scaling.accept(
        request.app[PG], request.app[REDIS], call.model, replicas, call.principal.user_id,
        idempotency_key(request), settings=request.app[SETTINGS])
    return _json(task, 202 if created else 200)


async def post_scale(request: web.Request) -> web.Response:
    """Create a scale task (seed 002 body, `config.replicas`): 202 with the pending task."""
    body: TaskRequest = call_of(request).body
    if body.config.replicas is None:
        raise ApiError(422, "invalid request: config.replicas is required",
                       {"field": "config.replicas"})
    if unused := body.config.unused_keys(TaskKind.scale, None):
        raise ApiError(422, "invalid request: a scale task takes config.replicas only; "
                       f"{', '.join(f'config.{key}' for key in unused)} would have no effect",
                       {"fields": [f"config.{key}" for key in unused]})
    return await _answer(request, body.config.replicas)


async def post_v2_scale(request: web.Request) -> web.Response:
    """Scale the serving generation to `replicas`: 202 with the pending scale task."""
    body: ScaleRequest = call_of(request).body
    return await _answer(request, body.replicas)


async def get_scale_task(request: web.Request) -> web.Response:
    return _json(request[_LOCATED_TASK])


ROUTES = [
    RouteSpec("POST", "/scale", post_scale, OWNER, TaskRequest, TaskResponse,
              body_field("embedding_model_id"), 202, summary="Create a scale task",
              replay_status=200),
    RouteSpec("GET", "/scale/{task_id}", get_scale_task, READ, None, TaskResponse,
              task_model(TaskKind.scale), summary="A scale task"),
    RouteSpec("POST", f"{PREFIX}/{MODEL}/scale", post_v2_scale, OWNER, ScaleRequest,
              TaskResponse, path_param("model_id"), 202, replay_status=200,
              summary="Scale the serving generation to a replica count"),
]
