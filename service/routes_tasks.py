"""Seed 002: the task API at the root — deploy and delete tasks, by id and by model."""

from aiohttp import web

from schemas.tasks import TaskKind, TaskRequest
from service import task_service
from service.keys import PG, REDIS
from service.parsing import parse_body


def _json(task: task_service.Task, status: int = 200) -> web.Response:
    body = task_service.to_response(task).model_dump_json()
    return web.Response(text=body, status=status, content_type="application/json")


async def _create(request: web.Request, kind: TaskKind) -> web.Response:
    body = await parse_body(request, TaskRequest)
    task, created = await task_service.accept(
        request.app[PG], request.app[REDIS], kind, body, request.headers.get("Idempotency-Key")
    )
    return _json(task, 202 if created else 200)


async def post_deploy(request: web.Request) -> web.Response:
    """Create a deploy task: 202 with the pending task."""
    return await _create(request, TaskKind.deploy)


async def post_delete(request: web.Request) -> web.Response:
    """Create a delete task: 202 with the pending task."""
    return await _create(request, TaskKind.delete)


async def get_deploy_task(request: web.Request) -> web.Response:
    task = await task_service.get(request.app[PG], TaskKind.deploy, request.match_info["task_id"])
    return _json(task)


async def get_delete_task(request: web.Request) -> web.Response:
    task = await task_service.get(request.app[PG], TaskKind.delete, request.match_info["task_id"])
    return _json(task)


async def get_deploy_status(request: web.Request) -> web.Response:
    task = await task_service.latest_for_model(
        request.app[PG], TaskKind.deploy, request.match_info["embedding_model_id"])
    return _json(task)


async def get_delete_status(request: web.Request) -> web.Response:
    task = await task_service.latest_for_model(
        request.app[PG], TaskKind.delete, request.match_info["embedding_model_id"])
    return _json(task)


def setup(app: web.Application) -> None:
    app.router.add_post("/deploy", post_deploy)
    app.router.add_get("/deploy/{task_id}", get_deploy_task)
    app.router.add_get("/deploy-status/{embedding_model_id:.+}", get_deploy_status)
    app.router.add_post("/delete", post_delete)
    app.router.add_get("/delete/{task_id}", get_delete_task)
    app.router.add_get("/delete-status/{embedding_model_id:.+}", get_delete_status)
