"""Read-only queries for the console: deployments with replica counts, generations, tasks."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.deployments import Deployment
from db.errors import translated
from db.pool import Executor
from db.tasks import _SELECT as _TASK_SELECT
from db.tasks import Task


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    deployment: Deployment
    replicas_ready: int


@dataclass(frozen=True, slots=True)
class Generation:
    generation: int
    task_id: UUID | None
    replicas: int
    states: list[str]
    started_at: datetime
    last_change_at: datetime


async def deployments_of(db: Executor, model_ids: list[UUID]) -> list[DeploymentRow]:
    """The deployments of these models, each with its ready replicas of the serving generation."""
    async with translated():
        rows: list[Any] = await db.fetch(
            """SELECT d.model_id, d.name, d.status, d.active_generation, d.last_generation,
                      d.config, d.created_at, d.updated_at,
                      (SELECT count(*) FROM replicas r WHERE r.model_id = d.model_id
                         AND r.generation = d.active_generation AND r.state = 'ready') AS ready
               FROM deployments d WHERE d.model_id = ANY($1::uuid[]) ORDER BY d.name""",
            model_ids,
        )
    found = []
    for row in rows:
        values = dict(row)
        ready = values.pop("ready")
        found.append(DeploymentRow(Deployment(**values), ready))
    return found


async def generations(db: Executor, model_id: UUID, limit: int = 20) -> list[Generation]:
    """The model's newest generations as their replicas record them, newest first."""
    async with translated():
        rows = await db.fetch(
            """SELECT generation, (array_agg(task_id ORDER BY created_at))[1] AS task_id,
                      count(*) AS replicas, array_agg(DISTINCT state) AS states,
                      min(created_at) AS started_at, max(updated_at) AS last_change_at
               FROM replicas WHERE model_id = $1
               GROUP BY generation ORDER BY generation DESC LIMIT $2""",
            model_id, limit,
        )
    return [Generation(**dict(r)) for r in rows]


async def recent_tasks(db: Executor, model_id: UUID, limit: int = 20) -> list[Task]:
    """The model's newest tasks of every kind, newest first; not embed jobs, which are their
    users' own (the console's Embed jobs page, issue 30)."""
    async with translated():
        rows = await db.fetch(
            f"""{_TASK_SELECT} WHERE model_id = $1 AND kind <> 'embed'
                ORDER BY created_at DESC LIMIT $2""",
            model_id, limit,
        )
    return [Task(**dict(r)) for r in rows]
