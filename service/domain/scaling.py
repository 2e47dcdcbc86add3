"""Accepting an owner's scale (issue 14): a `scale` task on the serving generation."""

import asyncpg
from arq.connections import ArqRedis

from db import deployments
from db.models import Model
from db.tasks import Task
from schemas.errors import Conflict
from schemas.settings import Settings
from schemas.task_payloads import ScalePayload
from schemas.tasks import DeploymentConfig, TaskKind, TaskRequest
from service.domain import quotas, task_requests


async def accept(pool: asyncpg.Pool, redis: ArqRedis, model: Model, replicas: int,
                 user_id: int | None, idempotency_key: str | None, *,
                 settings: Settings) -> tuple[Task, bool]:
    """A pending scale task to `replicas`; 409 when nothing serves, 403 past a quota."""
    deployment = await deployments.get(pool, model.id)
    if deployment is None or deployment.active_generation is None:
        raise Conflict(f"model {model.identifier} has no serving deployment to scale",
                       {"embedding_model_id": model.identifier})
    config = DeploymentConfig.model_validate(deployment.config)
    if replicas > 0:
        await quotas.check_deploy(pool, settings, model,
                                  config.model_copy(update={"replicas": replicas}))
    req = TaskRequest(embedding_model_id=model.identifier,
                      config=DeploymentConfig(replicas=max(1, replicas)))
    payload = ScalePayload(embedding_model_id=model.identifier, replicas=replicas)
    return await task_requests.accept(pool, redis, TaskKind.scale, req, idempotency_key,
                                      user_id, model, settings=settings, payload=payload)
