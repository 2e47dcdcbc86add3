"""What the Model Bazaar surfaces (seeds 000 and 001) do, below their handlers.

Deploy and undeploy go through `task_requests.accept`, so the three surfaces share one
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
from arq.jobs import Job

from db import dependencies, deployments, events, generations, models, replicas, tasks
from db.deployments import Deployment
from db.errors import UniqueViolation
from db.models import Model
from db.tasks import Task
from edge.auth.permissions import user_permission_on
from schemas import secrets
from schemas.auth import Permission
from schemas.bazaar import DeployStatus as StatusWord
from schemas.errors import (
    Conflict,
    Invalid,
    Malformed,
    TooLarge,
    TooManyRequests,
    Unavailable,
)
from schemas.log_tail import event_for_reader
from schemas.queue import JOB_REPLICA_LOGS, logs_job_id
from schemas.settings import Settings
from schemas.tasks import (
    DeploymentConfig,
    DeploymentStatus,
    ReplicaState,
    TaskKind,
    TaskRequest,
    TaskStatus,
)
from service.domain import quotas, rate_limit, task_requests

log = structlog.get_logger(__name__)
LOGS_TIMEOUT_S = 5.0
LOG_TAIL_DEFAULT = 100
# Calls to the logs routes one user may make per window (each shares its job with identical
# calls): `greenroom logs --follow` (every 2 s, 30 a minute) and several console tabs
# (every 3 s, 20 a minute each) fit together; a flood of distinct tails does not.
LOGS_PER_CALLER, LOGS_WINDOW_S = 180, 60
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
    # Issue 26: the serving generation, the revision it pinned, the warm previous one.
    generation: int | None = None
    revision: str | None = None
    warm_generation: int | None = None


async def _dependencies_to_start(pool: asyncpg.Pool, model: Model,
                                 depth: int = 0) -> list[Model]:
    """The model's dependencies that do not serve yet, deepest first, each once.

    Starting one needs its owner's consent (review H1): the model's owner has write
    permission on it. A serving dependency is used as it is. One the model's owner may no
    longer read is left out, as a deleted one would be (its existence is not theirs to
    learn); one they read but may not start refuses the deploy (409) before any task is
    accepted."""
    if depth > MAX_DEPENDENCY_DEPTH:
        raise Invalid(f"dependencies of {model.identifier} are nested too deeply")
    plan: list[Model] = []
    for dep_id in await dependencies.list_for_model(pool, model.id):
        deployment = await deployments.get(pool, dep_id)
        if deployment is not None and deployment.status in dependencies.ACTIVE_STATES:
            continue
        dep = await models.get(pool, dep_id)
        if dep is None:
            continue  # deleted since the listing
        level = await user_permission_on(pool, model.owner_id, dep)
        if level < Permission.read:
            continue
        if level < Permission.write:
            raise Conflict(
                f"dependency {dep.identifier} of {model.identifier} is not running, and "
                "starting it needs write permission on it: ask its owner to deploy it "
                "or to grant write")
        plan += await _dependencies_to_start(pool, dep, depth + 1)
        plan.append(dep)
    return list({m.id: m for m in plan}.values())


async def _deploy_dependencies(pool: asyncpg.Pool, redis: ArqRedis, model: Model,
                               user_id: int | None, settings: Settings) -> None:
    """Accept a deploy task for each dependency `_dependencies_to_start` names."""
    for dep in await _dependencies_to_start(pool, model):
        req = TaskRequest(embedding_model_id=str(dep.id))
        await task_requests.accept(pool, redis, TaskKind.deploy, req, None, user_id, dep,
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
    task, _ = await task_requests.accept(pool, redis, TaskKind.deploy, req, idempotency_key,
                                         user_id, model, settings=settings)
    return task


async def _held_by_dependents(pool: asyncpg.Pool, model: Model) -> bool:
    """Whether an active deployment depends on the model and its owner may hold it (the
    model's own owner, or write permission on it): a dependent nobody allowed holds nothing
    (review H1)."""
    for _, owner_id in await dependencies.active_dependents(pool, model.id):
        if owner_id == model.owner_id:
            return True
        if await user_permission_on(pool, owner_id, model) >= Permission.write:
            return True
    return False


async def undeploy(pool: asyncpg.Pool, redis: ArqRedis, model: Model,
                   user_id: int | None, settings: Settings) -> Task:
    """Accept a delete task, unless an active deployment depends on the model (400) and its
    owner was allowed to (`_held_by_dependents`)."""
    if await _held_by_dependents(pool, model):
        raise Malformed(f"Unable to stop deployment for model {model.identifier} since it "
                        "is used by other active workflows.")
    req = TaskRequest(embedding_model_id=str(model.id))
    task, _ = await task_requests.accept(pool, redis, TaskKind.delete, req, None, user_id, model,
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


async def status(pool: asyncpg.Pool, model: Model,
                 permission: Permission = Permission.owner) -> DeployStatus:
    """Status, errors and warnings of the current deployment (since its latest deploy); a
    caller below WRITE sees failures without the replica's log lines."""
    deployment = await deployments.get(pool, model.id)
    latest = await tasks.latest_for_model(pool, model.id, TaskKind.deploy.value)
    since = latest.created_at if latest is not None else None
    recent = await events.list_since(pool, model.id, since)
    if permission < Permission.write:
        recent = [event_for_reader(e) for e in recent]
    errors = [e.message for e in recent if e.level == "error"]
    warnings = [e.message for e in recent if e.level == "warning"]
    if deployment is not None and deployment.status == DeploymentStatus.degraded:
        warnings.append("deployment is degraded: not every replica is ready")
    current, desired = await replica_counts(pool, deployment)
    generation = deployment.active_generation if deployment is not None else None
    pinned = (await generations.get(pool, model.id, generation)
              if generation is not None else None)
    return DeployStatus(_status_word(deployment, latest), errors, warnings,
                        [e.message for e in recent], current, desired, generation,
                        f"r{pinned.revision}" if pinned is not None else None,
                        deployment.previous_generation if deployment is not None else None)


async def replica_counts(pool: asyncpg.Pool, deployment: Deployment | None) -> tuple[int, int]:
    """(ready replicas of the serving generation, the count last asked for by a scale)."""
    if deployment is None or deployment.active_generation is None:
        return 0, 0
    rows = await replicas.list_for_model(pool, deployment.model_id)
    current = sum(1 for r in rows
                  if r.generation == deployment.active_generation and r.state == ReplicaState.ready)
    desired = deployment.desired_replicas
    return current, current if desired is None else desired


async def replica_logs(redis: ArqRedis, model_id: UUID, tail: int,
                       caller: str) -> list[dict[str, Any]]:
    """Ask a worker for the replicas' logs (the API never touches a runtime).

    One arq job per (model, tail): identical calls wait on the same job, and for
    LOGS_RESULT_KEEP_S after it answered read its kept result. 429 past the caller's
    LOGS_PER_CALLER calls a window; 503 if no worker answers within LOGS_TIMEOUT_S."""
    await rate_limit.take(redis, "logs", caller, LOGS_PER_CALLER, LOGS_WINDOW_S)
    try:
        async with asyncio.timeout(LOGS_TIMEOUT_S):
            return await _logs_job_result(redis, model_id, tail)
    except TimeoutError:
        raise Unavailable(f"no worker answered for logs within {LOGS_TIMEOUT_S:.0f}s") from None
    except Exception as exc:
        log.warning("replica_logs_failed", model=str(model_id), error=type(exc).__name__)
        raise Unavailable("logs are unavailable right now; try again shortly") from None


async def _logs_job_result(redis: ArqRedis, model_id: UUID, tail: int) -> list[dict[str, Any]]:
    job_id = logs_job_id(model_id, tail)
    job = await redis.enqueue_job(JOB_REPLICA_LOGS, str(model_id), tail, _job_id=job_id,
                                  _expires=timedelta(seconds=LOGS_TIMEOUT_S * 2))
    if job is None:  # an identical call's job is queued, running or answered: share it
        job = Job(job_id, redis, _queue_name=redis.default_queue_name,
                  _deserializer=redis.job_deserializer)
    result: list[dict[str, Any]] = await job.result(poll_delay=0.1)
    return result


async def save_copy(pool: asyncpg.Pool, settings: Settings, source_model: Model,
                    owner_id: int, name: str) -> Model:
    """A new model to save a deployed one into: train status in_progress, so undeployable;
    403 if the owner's models quota is full."""
    try:
        async with quotas.new_model_slot(pool, settings, owner_id) as conn:
            return await models.create(
                conn, model_id=uuid4(), owner_id=owner_id, name=name,
                source=source_model.source, dimension=source_model.dimension,
                train_status="in_progress", parent_id=source_model.id)
    except UniqueViolation:
        raise Conflict(f"a model named {name!r} already exists for this owner") from None


# The window of `job_events_per_minute`.
JOB_EVENTS_WINDOW_S = 60.0


async def _merge_job_metadata(pool: asyncpg.Pool, settings: Settings, model: Model,
                              metadata: dict[str, Any]) -> None:
    """A job's metadata, merged only while the model's stays within its bound (review L5)."""
    limit = settings.job_metadata_max_kb * 1024
    if not await models.merge_metadata_within(pool, model.id, metadata, limit):
        raise TooLarge(f"the model's metadata would pass {settings.job_metadata_max_kb} KB "
                       "(GREENROOM_JOB_METADATA_MAX_KB); send less")


async def update_deploy_status(pool: asyncpg.Pool, settings: Settings, model: Model,
                               new_status: StatusWord, metadata: dict[str, Any] | None) -> None:
    if metadata:
        await _merge_job_metadata(pool, settings, model, metadata)
    await deployments.set_status(pool, model.id, DeploymentStatus(new_status))


async def update_train_status(pool: asyncpg.Pool, settings: Settings, model: Model,
                              new_status: str, metadata: dict[str, Any] | None) -> None:
    if metadata:
        await _merge_job_metadata(pool, settings, model, metadata)
    await models.set_train_status(pool, model.id, new_status)


async def log_event(pool: asyncpg.Pool, settings: Settings, model: Model, level: str,
                    message: str, generation: int | None) -> None:
    """A job's event; 429 past `job_events_per_minute` events of the model (review L5)."""
    recent = await events.count_recent(pool, model.id, JOB_EVENTS_WINDOW_S)
    if recent >= settings.job_events_per_minute:
        raise TooManyRequests(
            f"{recent} events of this model in the last minute, the most a job may add "
            "(GREENROOM_JOB_EVENTS_PER_MINUTE); log less often", retry_after_s=10)
    await events.add(pool, model.id, level, message, generation=generation)
