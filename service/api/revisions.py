"""Revisions, generations and rollback (issue 26): `GET /api/v2/models/{model}/revisions`,
`GET /api/v2/models/{model}/generations`, `PATCH /api/v2/models/{model}` (a new source, a new
revision) and `POST /api/v2/deploy/{model}/rollback` with `GET /rollback/{task_id}`."""

from aiohttp import web

from edge.auth.locators import path_param
from edge.auth.rules import OWNER, READ
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.parsing import idempotency_key
from edge.responses import json_response
from edge.route_spec import RouteSpec
from schemas.auth import ModelOut, Permission
from schemas.revisions import ModelUpdate, PinnedGeneration, RevisionOut
from schemas.rollout import RollbackRequest
from schemas.tasks import TaskKind, TaskResponse
from service.api.bazaar_v2 import MODEL, PREFIX
from service.api.tasks import _LOCATED_TASK, _json, task_model
from service.domain import catalog, revisions
from service.keys import REDIS

# A model as PATCH names it: an owner/name whose name is not one of a model's sub-resources,
# so PATCH on /api/v2/models/{id}/upload (and the like) stays a 405, as before this route.
PATCHED = "{model_id:[^/]+(?:/(?!(?:upload|permissions|revisions|generations)$)[^/]+)?}"


async def list_revisions(request: web.Request) -> web.Response:
    """The model's revisions, newest first."""
    call = call_of(request)
    assert call.model is not None
    return json_response(await revisions.list_revisions(
        request.app[PG], call.model, call.permission >= Permission.owner))


async def list_generations(request: web.Request) -> web.Response:
    """The model's generations, newest first: each one's pinned revision, config and state."""
    call = call_of(request)
    assert call.model is not None
    return json_response(await revisions.list_generations(request.app[PG], call.model))


async def update_model(request: web.Request) -> web.Response:
    """Change the model: a new `source` makes a new revision (the next deploy's)."""
    call = call_of(request)
    assert call.model is not None
    model = await revisions.update(request.app[PG], request.app[SETTINGS], call.principal,
                                   call.model, call.body)
    return json_response(await catalog.describe(request.app[PG], model, call.principal))


async def post_rollback(request: web.Request) -> web.Response:
    """Roll back to an earlier generation: 202 with the pending rollback task."""
    call = call_of(request)
    assert call.model is not None
    task, created = await revisions.accept_rollback(
        request.app[PG], request.app[REDIS], request.app[SETTINGS], call.model, call.body,
        call.principal.user_id, idempotency_key(request))
    return _json(task, 202 if created else 200)


async def get_rollback_task(request: web.Request) -> web.Response:
    return _json(request[_LOCATED_TASK])


ROUTES = [
    RouteSpec("GET", f"/api/v2/models/{MODEL}/revisions", list_revisions, READ, None,
              list[RevisionOut], path_param("model_id"), summary="List a model's revisions"),
    RouteSpec("GET", f"/api/v2/models/{MODEL}/generations", list_generations, READ, None,
              list[PinnedGeneration], path_param("model_id"),
              summary="List a model's generations and their pinned revisions"),
    RouteSpec("PATCH", f"/api/v2/models/{PATCHED}", update_model, OWNER, ModelUpdate, ModelOut,
              path_param("model_id"), summary="Change a model (a new source: a new revision)"),
    RouteSpec("POST", f"{PREFIX}/{MODEL}/rollback", post_rollback, OWNER, RollbackRequest,
              TaskResponse, path_param("model_id"), 202, body_optional=True, replay_status=200,
              summary="Roll back to an earlier generation"),
    RouteSpec("GET", "/rollback/{task_id}", get_rollback_task, READ, None, TaskResponse,
              task_model(TaskKind.rollback), summary="A rollback task"),
]
