"""What the decision tests share: a task accepted as the API accepts it, run as a worker
runs it (worker/jobs.py `run_task`: claim, lease, dispatch), and what the database says."""

from typing import Any
from uuid import UUID

from db import deployments, replicas, tasks
from db.models import Model
from db.tasks import Task
from schemas.models import ModelSource
from schemas.tasks import DeploymentConfig, ReplicaState, TaskKind, TaskRequest
from service.domain import scaling, task_requests
from service.domain.registration import register
from worker.context import WorkerContext
from worker.jobs import run_task


async def a_model(ctx: WorkerContext, name: str = "decided") -> Model:
    """A public model served by the hashing backend (the fake never loads it)."""
    return await register(ctx.pool, "alice", name,
                          ModelSource(backend="hashing", dimension=8), "public")


async def run(ctx: WorkerContext, task: Task) -> Task:
    """Run the task as a worker does; returns it as it ended."""
    assert await run_task(ctx, str(task.id)) == "ran"
    ended = await tasks.get(ctx.pool, task.id)
    assert ended is not None
    return ended


async def deploy(ctx: WorkerContext, model: Model, **config: Any) -> Task:
    req = TaskRequest(embedding_model_id=model.identifier,
                      config=DeploymentConfig.model_validate(config))
    task, _ = await task_requests.accept(ctx.pool, ctx.redis, TaskKind.deploy, req, None,
                                         settings=ctx.settings)
    return await run(ctx, task)


async def delete(ctx: WorkerContext, model: Model) -> Task:
    req = TaskRequest(embedding_model_id=model.identifier)
    task, _ = await task_requests.accept(ctx.pool, ctx.redis, TaskKind.delete, req, None,
                                         settings=ctx.settings)
    return await run(ctx, task)


async def scale(ctx: WorkerContext, model: Model, count: int) -> Task:
    task, _ = await scaling.accept(ctx.pool, ctx.redis, model, count, None, None,
                                   settings=ctx.settings)
    return await run(ctx, task)


async def active_generation(ctx: WorkerContext, model: Model) -> int | None:
    deployment = await deployments.get(ctx.pool, model.id)
    return deployment.active_generation if deployment else None


async def states(ctx: WorkerContext, model: Model, generation: int) -> list[str]:
    """The states of the generation's replica rows, sorted."""
    rows = await replicas.list_for_model(ctx.pool, model.id, live_only=False)
    return sorted(r.state for r in rows if r.generation == generation)


async def ready_refs(ctx: WorkerContext, model_id: UUID, generation: int) -> set[str]:
    return {r.runtime_ref for r in await replicas.list_for_model(ctx.pool, model_id)
            if r.generation == generation and r.state == ReplicaState.ready
            and r.runtime_ref}
