"""Deployment events: the errors and warnings every status view shows."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    model_id: UUID
    task_id: UUID | None
    generation: int | None
    level: str
    message: str
    created_at: datetime


async def add(db: Executor, model_id: UUID, level: str, message: str, *,
              task_id: UUID | None = None, generation: int | None = None) -> None:
    async with translated():
        await db.execute(
            """INSERT INTO deployment_events (model_id, task_id, generation, level, message)
               VALUES ($1, $2, $3, $4, $5)""",
            model_id, task_id, generation, level, message,
        )


async def list_for_task(db: Executor, task_id: UUID) -> list[Event]:
    async with translated():
        rows = await db.fetch(
            """SELECT id, model_id, task_id, generation, level, message, created_at
               FROM deployment_events WHERE task_id = $1 ORDER BY id""",
            task_id,
        )
    return [Event(**dict(r)) for r in rows]


async def list_recent(db: Executor, model_id: UUID, limit: int = 100) -> list[Event]:
    async with translated():
        rows: list[Any] = await db.fetch(
            """SELECT id, model_id, task_id, generation, level, message, created_at
               FROM deployment_events WHERE model_id = $1 ORDER BY id DESC LIMIT $2""",
            model_id, limit,
        )
    return [Event(**dict(r)) for r in reversed(rows)]


async def list_since(db: Executor, model_id: UUID, since: datetime | None,
                     limit: int = 200) -> list[Event]:
    """The model's events from `since` on (all of them when None), oldest first."""
    async with translated():
        rows: list[Any] = await db.fetch(
            """SELECT id, model_id, task_id, generation, level, message, created_at
               FROM deployment_events
               WHERE model_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
               ORDER BY id DESC LIMIT $3""",
            model_id, since, limit,
        )
    return [Event(**dict(r)) for r in reversed(rows)]


async def count_recent(db: Executor, model_id: UUID, window_s: float) -> int:
    """The model's events written in the last `window_s` seconds."""
    async with translated():
        count: int = await db.fetchval(
            """SELECT count(*) FROM deployment_events
               WHERE model_id = $1 AND created_at > now() - make_interval(secs => $2)""",
            model_id, window_s)
    return count
