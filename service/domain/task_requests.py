"""Accepting and reading tasks: the outbox insert (idempotent by key), then the enqueue."""

import asyncio
import hashlib
import json
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson
import structlog
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from db import deploy_access, deployments, models, task_access, tasks
from db.errors import UniqueViolation
from db.models import Model
from db.owner_quotas import OwnerQuota
from db.permissions import Grant
from db.tasks import Task
from schemas import secrets, tracing
from schemas.errors import Conflict, Invalid, NotFound
from schemas.queue import JOB_RUN_TASK
from schemas.settings import Settings
from schemas.task_payloads import (
    DeletePayload,
    DeployPayload,
    RollbackPayload,
    ScalePayload,
    TaskPayload,
    TaskTarget,
)
from schemas.tasks import (
    Phase,
    TaskKind,
    TaskRequest,
    TaskResponse,
    TaskStatus,
    model_id_shaped,
)
from service.domain import job_queue, quotas

log = structlog.get_logger(__name__)
ENQUEUE_TIMEOUT_S = 2.0


def request_hash(kind: TaskKind, req: TaskRequest,
                 payload: dict[str, Any] | None = None) -> str:
    body = {"kind": kind.value, "model": req.embedding_model_id,
            "config": req.config.model_dump(mode="json", exclude_unset=True)}
    if payload is not None:  # a rollback's target generation is in its payload only
        body["payload"] = payload
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def model_reference(task: Task) -> str:
    """The model as the task's caller named it (rows stored without it: the model's id)."""
    return TaskTarget.model_validate(task.request).embedding_model_id or str(task.model_id)


def to_response(task: Task) -> TaskResponse:
    return TaskResponse(
        task_id=task.id, kind=TaskKind(task.kind), status=TaskStatus(task.status),
        phase=Phase(task.phase) if task.phase else None,
        created_at=task.created_at, updated_at=task.updated_at,
        embedding_model_id=model_reference(task), metadata=task.metadata, detail=task.detail,
    )


def response_json(task: Task) -> bytes:
    """`to_response(task).model_dump_json()`, byte for byte, without building the model:
    the polling hot path. orjson writes UTC datetimes (with `Z`) and jsonb values as
    pydantic does (asyncpg's UUID, a subclass orjson refuses, goes as its string);
    tests/service/test_task_json.py holds the two to the same bytes."""
    return orjson.dumps({
        "task_id": str(task.id), "kind": task.kind, "status": task.status, "phase": task.phase,
        "created_at": task.created_at, "updated_at": task.updated_at,
        "embedding_model_id": model_reference(task),
        "metadata": task.metadata, "detail": task.detail,
    }, option=orjson.OPT_UTC_Z)


async def resolve_model(pool: asyncpg.Pool, ref: str) -> Model:
    model = await models.find(pool, ref)
    if model is None:
        raise NotFound(f"model {ref!r} not found", {"embedding_model_id": ref})
    return model


def _same_request(existing: Task, digest: str) -> Task:
    if existing.request_hash != digest:
        raise Invalid("idempotency key was already used with a different request",
                      {"task_id": str(existing.id)})
    return existing


async def _check_deployable(pool: asyncpg.Pool, model: Model, req: TaskRequest) -> None:
    if model.train_status != "complete":
        raise Conflict(f"model {model.identifier} cannot be deployed while its train "
                       f"status is {model.train_status}")
    name = req.config.deployment_name
    if name:
        if model_id_shaped(name):
            raise Invalid(f"deployment name {name!r} is shaped like a model id; "
                          "choose another", {"deployment_name": name})
        taken = await deployments.get_by_name(pool, name)
        if taken is not None and taken.model_id != model.id:
            raise Conflict(f"deployment name {name!r} is taken by another model")
        if await deployments.name_held_by_another(pool, name, model.id):
            raise Conflict(f"deployment name {name!r} was another model's until recently "
                           "and is held for it; choose another")


async def enqueue(redis: ArqRedis, pool: asyncpg.Pool, task_id: UUID) -> bool:
    """Hand a task inserted with `enqueued=True` to arq in one round trip; on failure
    clear its `enqueued_at`, so the reconciler enqueues it as soon as Redis is back.

    A process that dies between the insert and this leaves `enqueued_at` set: the
    reconciler offers such a task again after `REENQUEUE_AFTER_S` (worker/reconciler.py).
    """
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await job_queue.enqueue(redis, JOB_RUN_TASK, str(task_id), str(task_id))
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("enqueue_deferred", task=str(task_id), error=str(exc) or type(exc).__name__)
        await tasks.mark_unenqueued(pool, task_id)
        return False
    return True


def _payload(kind: TaskKind, req: TaskRequest, settings: Settings) -> TaskPayload:
    """What the worker is to do for a deploy or a delete of `req`; a deploy's env values
    sealed at rest (review L5)."""
    if kind == TaskKind.delete:
        return DeletePayload(embedding_model_id=req.embedding_model_id)
    if kind != TaskKind.deploy:
        raise ValueError(f"a {kind.value} task's payload is its caller's to build")
    config = req.config
    if config.env and settings.secret_key is not None:
        config = config.model_copy(update={"env": secrets.seal_env(
            settings.secret_key.get_secret_value(), config.env)})
    return DeployPayload(embedding_model_id=req.embedding_model_id, config=config)


async def accept(pool: asyncpg.Pool, redis: ArqRedis, kind: TaskKind, req: TaskRequest,
                 idempotency_key: str | None, created_by: int | None = None,
                 model: Model | None = None, *, settings: Settings,
                 payload: ScalePayload | RollbackPayload | None = None,
                 owner_quota: OwnerQuota | None = None) -> tuple[Task, bool]:
    """Insert (or find, for an idempotency key `created_by` used before) the task; True
    when created now. Keys are per user: another user's key names another task.

    `model`, when the caller already resolved `req.embedding_model_id`, saves a lookup,
    and `owner_quota` (`locate_for_deploy`) another. A deploy that would take the model's
    owner past a quota is refused (403). The task stores its payload: a scale's, built by
    its caller, is `payload`; a deploy's or a delete's is built from `req`. Round trips:
    the insert, the enqueue.
    """
    key = req.id or idempotency_key
    digest = request_hash(kind, req, payload.stored()
                          if kind == TaskKind.rollback and payload is not None else None)
    if key and (existing := await tasks.get_by_idempotency_key(pool, key, created_by)):
        return _same_request(existing, digest), False
    model = model or await resolve_model(pool, req.embedding_model_id)
    if kind == TaskKind.deploy:
        await _check_deployable(pool, model, req)
        await quotas.check_deploy(pool, settings, model, req.config, owner_quota)
    metadata: dict[str, Any] = {}
    # Accepted but without effect: said in the task's answer, never silently dropped.
    if unused := req.config.unused_keys(kind, model.source.get("backend")):
        metadata["ignored_config_keys"] = unused
    stored = (payload or _payload(kind, req, settings)).stored()
    try:
        task = await tasks.insert(
            pool, task_id=uuid4(), kind=kind.value, model_id=model.id, request=stored,
            request_hash=digest, idempotency_key=key, created_by=created_by, metadata=metadata,
            enqueued=True,
        )
    except UniqueViolation as exc:
        if key and exc.constraint == "tasks_idempotency_key":
            existing = await tasks.get_by_idempotency_key(pool, key, created_by)
            if existing is not None:
                return _same_request(existing, digest), False
        raise
    log.info("task_accepted", task=str(task.id), kind=kind.value, model=str(model.id))
    with tracing.span("greenroom-api", f"accept {kind.value} task",
                      **{"greenroom.task_id": str(task.id), "greenroom.model_id": str(model.id)}):
        await enqueue(redis, pool, task.id)
    return task, True


async def locate_for_deploy(pool: asyncpg.Pool, ref: str, user_id: int | None
                            ) -> tuple[Model, Grant | None, OwnerQuota] | None:
    """The model a deploy names, the caller's grant on it and what its owner's quota
    check needs, in one round trip; None if there is no such model."""
    return await deploy_access.model_for_deploy(pool, ref, user_id, quotas.OPEN)


def task_not_found(kind: TaskKind, task_id: str) -> NotFound:
    """The answer for a task id that names no task of `kind` the caller may read."""
    return NotFound(f"{kind.value} task {task_id!r} not found")


async def get(pool: asyncpg.Pool, kind: TaskKind, task_id: str) -> Task:
    try:
        parsed = UUID(task_id)
    except ValueError:
        raise task_not_found(kind, task_id) from None
    task = await tasks.get(pool, parsed, kind.value)
    if task is None:
        raise task_not_found(kind, task_id)
    return task


async def get_with_access(pool: asyncpg.Pool, kind: TaskKind, task_id: str,
                          user_id: int | None) -> tuple[Task, Model, Grant | None]:
    """The task, its model and `user_id`'s grant on it, in one round trip; 404 if none."""
    try:
        parsed = UUID(task_id)
    except ValueError:
        raise task_not_found(kind, task_id) from None
    found = await task_access.get_with_access(pool, parsed, kind.value, user_id)
    if found is None:
        raise task_not_found(kind, task_id)
    return found


async def latest_for_model(pool: asyncpg.Pool, kind: TaskKind, model_ref: str) -> Task:
    model = await resolve_model(pool, model_ref)
    task = await tasks.latest_for_model(pool, model.id, kind.value)
    if task is None:
        raise NotFound(f"no {kind.value} task for model {model_ref!r}")
    return task
