"""What the console shows, assembled from the repositories, filtered by the caller's access."""

import dataclasses
from datetime import UTC, datetime
from typing import Literal, cast
from uuid import UUID

import asyncpg

from db import events, models, overview, replicas
from db.events import Event
from db.models import Model
from db.overview import DeploymentRow
from db.tasks import Task
from edge.auth.permissions import permission_on
from schemas.auth import Permission, Principal
from schemas.console import (
    DeploymentDetail,
    DeploymentSummary,
    EventOut,
    GenerationOut,
    LatencyOut,
    ReplicaOut,
    TaskDetail,
)
from schemas.errors import NotFound
from schemas.gateway import Latency
from schemas.log_tail import event_for_reader, task_for_reader
from schemas.tasks import DeploymentConfig, replica_count
from service.domain import task_requests

Level = Literal["read", "write", "owner"]


def _level(permission: Permission) -> Level:
    return cast(Level, permission.name)


def _config(raw: dict[str, object]) -> DeploymentConfig:
    try:
        return DeploymentConfig.model_validate(raw)
    except ValueError:
        return DeploymentConfig()


Rates = dict[str, float] | None  # requests per second by replica id (None: unknown)
Latencies = dict[str, Latency] | None  # the last window's latency by model id (None: unknown)


async def _per_model(pool: asyncpg.Pool, rates: Rates) -> dict[UUID, float] | None:
    if rates is None:
        return None
    found: dict[UUID, float] = {}
    for r in await replicas.list_live(pool):
        found[r.model_id] = found.get(r.model_id, 0.0) + rates.get(str(r.id), 0.0)
    return found


def latency_out(window: Latency | None) -> LatencyOut | None:
    """A window's latency in milliseconds; None when nothing finished in it."""
    if window is None or window.count <= 0:
        return None
    p50, p99 = window.quantile(0.5), window.quantile(0.99)
    return LatencyOut(requests=window.count, mean_ms=round(window.sum_s / window.count * 1000, 2),
                      p50_ms=None if p50 is None else round(p50 * 1000, 2),
                      p99_ms=None if p99 is None else round(p99 * 1000, 2))


def summary(row: DeploymentRow, model: Model, permission: Permission,
            per_model: dict[UUID, float] | None = None,
            latency: Latencies = None) -> DeploymentSummary:
    d = row.deployment
    config = _config(d.config)
    return DeploymentSummary(
        model_id=d.model_id, model=model.identifier, name=d.name, status=d.status,
        active_generation=d.active_generation, replicas_ready=row.replicas_ready,
        replicas_wanted=0 if d.active_generation is None else replica_count(config),
        autoscaling_enabled=config.autoscaling_enabled, autoscaling_min=config.autoscaling_min,
        autoscaling_max=config.autoscaling_max, memory=config.memory,
        env_names=sorted(config.env), permission=_level(permission), updated_at=d.updated_at,
        requests_per_s=None if per_model is None else round(per_model.get(d.model_id, 0.0), 2),
        latency=latency_out((latency or {}).get(str(d.model_id))))


async def list_deployments(pool: asyncpg.Pool, principal: Principal, rates: Rates = None,
                           latency: Latencies = None) -> list[DeploymentSummary]:
    """Every deployment of a model the caller can read."""
    per_model = await _per_model(pool, rates)
    visible = await models.list_visible(pool, principal.user_id, principal.is_admin)
    by_id = {m.id: m for m in visible}
    found = []
    for row in await overview.deployments_of(pool, list(by_id)):
        model = by_id[row.deployment.model_id]
        permission, _ = await permission_on(pool, principal, model)
        if permission >= Permission.read:
            found.append(summary(row, model, permission, per_model, latency))
    return found


def _task_as_read(task: Task, permission: Permission) -> Task:
    return task if permission >= Permission.write else task_for_reader(task)


def event_out(e: Event, permission: Permission) -> EventOut:
    """An event as `permission` sees it: a reader, without a failed replica's log lines."""
    e = e if permission >= Permission.write else event_for_reader(e)
    return EventOut(id=e.id, task_id=e.task_id, generation=e.generation, level=e.level,
                    message=e.message, created_at=e.created_at)


async def deployment_detail(pool: asyncpg.Pool, model: Model, permission: Permission,
                            rates: Rates = None, latency: Latencies = None) -> DeploymentDetail:
    rows = await overview.deployments_of(pool, [model.id])
    if not rows:
        raise NotFound(f"model {model.identifier} has never been deployed")
    live = await replicas.list_for_model(pool, model.id)
    return DeploymentDetail(
        deployment=summary(rows[0], model, permission, await _per_model(pool, rates),
                           latency),
        replicas=[ReplicaOut(id=r.id, generation=r.generation, state=r.state,
                             endpoint=r.endpoint, reported_status=r.reported_status,
                             created_at=r.created_at, updated_at=r.updated_at) for r in live],
        generations=[GenerationOut(**dataclasses.asdict(g)) for g in
                     await overview.generations(pool, model.id)],
        events=[event_out(e, permission) for e in await events.list_recent(pool, model.id, 50)],
        tasks=[task_requests.to_response(_task_as_read(t, permission))
               for t in await overview.recent_tasks(pool, model.id)],
    )


async def task_detail(pool: asyncpg.Pool, task: Task, permission: Permission) -> TaskDetail:
    base = task_requests.to_response(_task_as_read(task, permission))
    return TaskDetail(**base.model_dump(), model_id=task.model_id, started_at=task.started_at,
                      finished_at=task.finished_at, now=datetime.now(UTC),
                      events=[event_out(e, permission)
                              for e in await events.list_for_task(pool, task.id)],
                      permission=_level(permission))


async def readable(pool: asyncpg.Pool, principal: Principal, model_id: UUID) -> bool:
    model = await models.get(pool, model_id)
    if model is None:
        return False
    permission, _ = await permission_on(pool, principal, model)
    return permission >= Permission.read
