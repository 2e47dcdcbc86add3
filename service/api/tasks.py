"""Seed 002: the task API at the root — deploy and delete tasks, by id and by model."""

from aiohttp import web

from db.owner_quotas import OwnerQuota
from db.tasks import Task
from edge.auth.locators import (
    CALLER,
    LOCATED_ACCESS,
    MISSING,
    Locator,
    body_field,
    path_param,
)
from edge.auth.rules import OWNER, READ
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.parsing import idempotency_key
from edge.route_spec import RouteSpec
from edge.routes import register
from schemas.auth import Permission
from schemas.log_tail import task_for_reader
from schemas.tasks import TaskKind, TaskRequest, TaskResponse
from service.domain import task_requests
from service.keys import REDIS

_LOCATED_TASK = web.RequestKey("located_task", Task)
_OWNER_QUOTA = web.RequestKey("owner_quota", OwnerQuota)


def _json(task: Task, status: int = 200) -> web.Response:
    return web.Response(body=task_requests.response_json(task), status=status,
                        content_type="application/json")


async def _create(request: web.Request, kind: TaskKind) -> web.Response:
    call = call_of(request)
    task, created = await task_requests.accept(
        request.app[PG], request.app[REDIS], kind, call.body,
        idempotency_key(request), call.principal.user_id, call.model,
        settings=request.app[SETTINGS], owner_quota=request.get(_OWNER_QUOTA),
    )
    return _json(task, 202 if created else 200)


async def post_deploy(request: web.Request) -> web.Response:
    """Create a deploy task: 202 with the pending task."""
    return await _create(request, TaskKind.deploy)


async def post_delete(request: web.Request) -> web.Response:
    """Create a delete task: 202 with the pending task."""
    return await _create(request, TaskKind.delete)


def _as_read(request: web.Request, task: Task) -> Task:
    """A reader (below WRITE) sees a failed rollout's reason without its log lines."""
    return task if call_of(request).permission >= Permission.write else task_for_reader(task)


async def get_deploy_task(request: web.Request) -> web.Response:
    return _json(_as_read(request, request[_LOCATED_TASK]))


async def get_delete_task(request: web.Request) -> web.Response:
    return _json(_as_read(request, request[_LOCATED_TASK]))


async def get_deploy_status(request: web.Request) -> web.Response:
    task = await task_requests.latest_for_model(
        request.app[PG], TaskKind.deploy, request.match_info["embedding_model_id"])
    return _json(_as_read(request, task))


async def get_delete_status(request: web.Request) -> web.Response:
    task = await task_requests.latest_for_model(
        request.app[PG], TaskKind.delete, request.match_info["embedding_model_id"])
    return _json(_as_read(request, task))


def task_model(kind: TaskKind) -> Locator:
    """The model of the task in the path: reading a task needs read access to its model.
    The task, its model and the caller's grant come in one query (the polling hot path)."""
    async def locate(request: web.Request, body: object) -> str:
        task_id = request.match_info["task_id"]
        task, model, grant = await task_requests.get_with_access(
            request.app[PG], kind, task_id, request[CALLER].user_id)
        request[MISSING] = task_requests.task_not_found(kind, task_id)
        request[_LOCATED_TASK] = task  # the handler answers with it; no second read
        request[LOCATED_ACCESS] = (model, grant)
        return str(task.model_id)
    return locate


def deploy_model() -> Locator:
    """The model a deploy names: it, the caller's grant and its owner's quota figures come
    in one query (the accept's hot path). No such model: the guard's own lookup answers."""
    async def locate(request: web.Request, body: TaskRequest) -> str:
        ref = body.embedding_model_id
        found = await task_requests.locate_for_deploy(request.app[PG], ref,
                                                      request[CALLER].user_id)
        if found is not None:
            request[LOCATED_ACCESS] = found[:2]
            request[_OWNER_QUOTA] = found[2]
        return ref
    return locate


MODEL_REF = "{embedding_model_id:.+}"
ROUTES = [
    RouteSpec("POST", "/deploy", post_deploy, OWNER, TaskRequest, TaskResponse,
              deploy_model(), 202, summary="Create a deploy task", replay_status=200),
    RouteSpec("GET", "/deploy/{task_id}", get_deploy_task, READ, None, TaskResponse,
              task_model(TaskKind.deploy), summary="A deploy task"),
    RouteSpec("GET", f"/deploy-status/{MODEL_REF}", get_deploy_status, READ, None,
              TaskResponse, path_param("embedding_model_id"),
              summary="The model's latest deploy task"),
    RouteSpec("POST", "/delete", post_delete, OWNER, TaskRequest, TaskResponse,
              body_field("embedding_model_id"), 202, summary="Create a delete task",
              replay_status=200),
    RouteSpec("GET", "/delete/{task_id}", get_delete_task, READ, None, TaskResponse,
              task_model(TaskKind.delete), summary="A delete task"),
    RouteSpec("GET", f"/delete-status/{MODEL_REF}", get_delete_status, READ, None,
              TaskResponse, path_param("embedding_model_id"),
              summary="The model's latest delete task"),
]


def setup(app: web.Application) -> None:
    register(app, ROUTES)
