"""What the Model Bazaar surfaces (seeds 000 and 001) do, below their handlers.

Deploy and undeploy go through `task_service.accept`, so the three surfaces share one
set of tasks and deployments.
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import structlog
from arq.connections import ArqRedis

from db import dependencies, deployments, events, models, replicas, tasks
from db.deployments import Deployment
from db.errors import UniqueViolation
from db.models import Model
from db.tasks import Task
from schemas import secrets
from schemas.bazaar import DeployStatus as StatusWord
from schemas.errors import Conflict, Invalid, Malformed, Unavailable
from schemas.queue import JOB_REPLICA_LOGS
from schemas.settings import Settings
from schemas.tasks import (
    DeploymentConfig,
    DeploymentStatus,
    ReplicaState,
    TaskKind,
    TaskRequest,
    TaskStatus,
)
from service.domain import tasks as task_service

log = structlog.get_logger(__name__)
LOGS_TIMEOUT_S = 5.0
LOG_TAIL_DEFAULT = 100
MAX_DEPENDENCY_DEPTH = 8


# Seed 001's word for each deployment status: `degraded` still serves, so it reads
# `complete` (with a warning).
SEED_WORDS: dict[DeploymentStatus, StatusWord] = {
    DeploymentStatus.not_started: "not_started", DeploymentStatus.starting: "starting",
    DeploymentStatus.in_progress: "in_progress", DeploymentStatus.complete: "complete",
    DeploymentStatus.degraded: "complete", DeploymentStatus.failed: "failed",
    DeploymentStatus.stopped: "stopped"}


@dataclass(frozen=True, slots=True)
class DeployStatus:
    status: StatusWord
    errors: list[str]
    warnings: list[str]
    messages: list[str]
    replicas_current: int = 0
    replicas_desired: int = 0


async def _deploy_dependencies(pool: asyncpg.Pool, redis: ArqRedis, model: Model,
                               user_id: int | None, settings: Settings,
                               depth: int = 0) -> None:
    """Deploy every dependency that is not serving yet, deepest first."""
    if depth > MAX_DEPENDENCY_DEPTH:
        raise Invalid(f"dependencies of {model.identifier} are nested too deeply")
    for dep_id in await dependencies.list_for_model(pool, model.id):
        deployment = await deployments.get(pool, dep_id)
        if deployment is not None and deployment.status in dependencies.ACTIVE_STATES:
            continue
        dep = await models.get(pool, dep_id)
        assert dep is not None
        await _deploy_dependencies(pool, redis, dep, user_id, settings, depth + 1)
        req = TaskRequest(embedding_model_id=str(dep.id))
        await task_service.accept(pool, redis, TaskKind.deploy, req, None, user_id, dep,
                                  settings=settings)
        log.info("dependency_deploy_accepted", model=str(model.id), dependency=str(dep.id))


async def store_secrets(pool: asyncpg.Pool, secret_key: str, model: Model,
                        values: dict[str, str]) -> None:
    """Encrypt and keep the secrets the model's replicas get as environment variables."""
    blob = secrets.encrypt(secret_key, values)
    await deployments.store_secrets(pool, model.id, blob)


async def deploy(pool: asyncpg.Pool, redis: ArqRedis, model: Model, config: DeploymentConfig,
                 user_id: int | None, settings: Settings,
                 idempotency_key: str | None = None) -> Task:
    """Accept a deploy task for the model, after deploy tasks for its idle dependencies."""
    await _deploy_dependencies(pool, redis, model, user_id, settings)
    req = TaskRequest(embedding_model_id=str(model.id), config=config)
    task, _ = await task_service.accept(pool, redis, TaskKind.deploy, req, idempotency_key,
                                        user_id, model, settings=settings)
    return task


async def undeploy(pool: asyncpg.Pool, redis: ArqRedis, model: Model,
                   user_id: int | None, settings: Settings) -> Task:
    """Accept a delete task, unless an active deployment depends on the model (400)."""
    if await dependencies.active_dependents(pool, model.id):
        raise Malformed(f"Unable to stop deployment for model {model.identifier} since it "
                        "is used by other active workflows.")
    req = TaskRequest(embedding_model_id=str(model.id))
    task, _ = await task_service.accept(pool, redis, TaskKind.delete, req, None, user_id, model,
                                        settings=settings)
    return task


def _status_word(deployment: Deployment | None, latest: Task | None) -> StatusWord:
    """Seed 001's word for the deployment, `starting`/`in_progress` while a deploy is open."""
    current = DeploymentStatus(deployment.status if deployment is not None
                               else DeploymentStatus.not_started)
    if latest is not None and latest.status in (TaskStatus.pending, TaskStatus.processing):
        if current in (DeploymentStatus.not_started, DeploymentStatus.stopped,
                       DeploymentStatus.failed):
            return "starting"
        if current == DeploymentStatus.complete:
            return "in_progress"
    return SEED_WORDS[current]


async def status(pool: asyncpg.Pool, model: Model) -> DeployStatus:
    """Status, errors and warnings of the current deployment (since its latest deploy)."""
    deployment = await deployments.get(pool, model.id)
    latest = await tasks.latest_for_model(pool, model.id, TaskKind.deploy.value)
    since = latest.created_at if latest is not None else None
    recent = await events.list_since(pool, model.id, since)
    errors = [e.message for e in recent if e.level == "error"]
    warnings = [e.message for e in recent if e.level == "warning"]
    if deployment is not None and deployment.status == DeploymentStatus.degraded:
        warnings.append("deployment is degraded: not every replica is ready")
    current, desired = await replica_counts(pool, deployment)
    return DeployStatus(_status_word(deployment, latest), errors, warnings,
                        [e.message for e in recent], current, desired)


async def replica_counts(pool: asyncpg.Pool, deployment: Deployment | None) -> tuple[int, int]:
    """(ready replicas of the serving generation, the count last asked for by a scale)."""
    if deployment is None or deployment.active_generation is None:
        return 0, 0
    rows = await replicas.list_for_model(pool, deployment.model_id)
    current = sum(1 for r in rows
                  if r.generation == deployment.active_generation and r.state == ReplicaState.ready)
    desired = deployment.desired_replicas
    return current, current if desired is None else desired


async def replica_logs(redis: ArqRedis, model_id: UUID, tail: int) -> list[dict[str, Any]]:
    """Ask a worker for the replicas' logs (the API never touches a runtime); 503 if none
    answers within LOGS_TIMEOUT_S."""
    try:
        async with asyncio.timeout(LOGS_TIMEOUT_S):
            job = await redis.enqueue_job(JOB_REPLICA_LOGS, str(model_id), tail,
                                          _expires=timedelta(seconds=LOGS_TIMEOUT_S * 2))
            if job is None:
                raise Unavailable("a logs request for this model is already running")
            result: list[dict[str, Any]] = await job.result(poll_delay=0.1)
    except TimeoutError:
        raise Unavailable(f"no worker answered for logs within {LOGS_TIMEOUT_S:.0f}s") from None
    except Unavailable:
        raise
    except Exception as exc:
        log.warning("replica_logs_failed", model=str(model_id), error=type(exc).__name__)
        raise Unavailable("logs are unavailable right now; try again shortly") from None
    return result


async def save_copy(pool: asyncpg.Pool, source_model: Model, owner_id: int,
                    name: str) -> Model:
    """A new model to save a deployed one into: train status in_progress, so undeployable."""
    try:
        return await models.create(
            pool, model_id=uuid4(), owner_id=owner_id, name=name, source=source_model.source,
            dimension=source_model.dimension, train_status="in_progress",
            parent_id=source_model.id)
    except UniqueViolation:
        raise Conflict(f"a model named {name!r} already exists for this owner") from None


async def update_deploy_status(pool: asyncpg.Pool, model: Model, new_status: StatusWord,
                               metadata: dict[str, Any] | None) -> None:
    await deployments.set_status(pool, model.id, DeploymentStatus(new_status))
    if metadata:
        await models.merge_metadata(pool, model.id, metadata)


async def update_train_status(pool: asyncpg.Pool, model: Model, new_status: str,
                              metadata: dict[str, Any] | None) -> None:
    await models.set_train_status(pool, model.id, new_status)
    if metadata:
        await models.merge_metadata(pool, model.id, metadata)


async def log_event(pool: asyncpg.Pool, model: Model, level: str, message: str,
                    generation: int | None) -> None:
    await events.add(pool, model.id, level, message, generation=generation)
