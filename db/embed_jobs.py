"""Embed jobs (issue 30): a bulk embedding job's row beside its task (`tasks.kind = 'embed'`):
the pinned generation, its files' sizes, its counts and its checkpoint."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from db import tasks
from db.errors import translated
from db.pool import Executor, transaction
from db.tasks import Task

_JOB_COLUMNS = """j.id, j.owner_id, j.model_id, j.generation, j.dimensions, j.normalize,
    j.input_bytes, j.total, j.done, j.failed, j.tokens, j.input_offset, j.results_bytes,
    j.dimension, j.run_started_at, j.run_started_done, j.checkpoint_at, j.cancel_requested,
    j.created_at, j.expires_at"""
_SELECT = f"""SELECT {_JOB_COLUMNS}, t.status, t.detail, t.finished_at, t.request
    FROM embed_jobs j JOIN tasks t ON t.id = j.id"""


@dataclass(frozen=True, slots=True)
class EmbedJob:
    id: UUID
    owner_id: int
    model_id: UUID
    generation: int
    dimensions: int | None
    normalize: bool
    input_bytes: int
    total: int
    done: int
    failed: int
    tokens: int
    input_offset: int
    results_bytes: int
    dimension: int | None
    run_started_at: datetime | None
    run_started_done: int
    checkpoint_at: datetime | None
    cancel_requested: bool
    created_at: datetime
    expires_at: datetime | None
    # from the task
    status: str
    detail: str | None
    finished_at: datetime | None
    request: dict[str, Any]


def _job(row: Any) -> EmbedJob | None:
    return EmbedJob(**dict(row)) if row is not None else None


async def insert(pool: asyncpg.Pool, *, job_id: UUID, owner_id: int, model_id: UUID,
                 generation: int, dimensions: int | None, normalize: bool,
                 request: dict[str, Any], request_hash: str, input_bytes: int,
                 total: int) -> Task:
    """The job's task (pending, `enqueued_at` set: the caller enqueues it next and clears it
    if that fails) and its row, in one transaction."""
    async with translated(), transaction(pool) as c:
        await c.execute(
            """INSERT INTO tasks (id, kind, model_id, request, request_hash, created_by,
                                  enqueued_at)
               VALUES ($1, 'embed', $2, $3, $4, $5, now())""",
            job_id, model_id, request, request_hash, owner_id)
        await c.execute(
            """INSERT INTO embed_jobs (id, owner_id, model_id, generation, dimensions,
                                       normalize, input_bytes, total)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            job_id, owner_id, model_id, generation, dimensions, normalize, input_bytes,
            total)
        task = await tasks.get(c, job_id)
    assert task is not None
    return task


async def get(db: Executor, job_id: UUID) -> EmbedJob | None:
    async with translated():
        return _job(await db.fetchrow(f"{_SELECT} WHERE j.id = $1", job_id))


async def list_for_owner(db: Executor, owner_id: int | None, limit: int = 100) -> list[EmbedJob]:
    """The owner's newest jobs (None: everyone's, for an administrator)."""
    async with translated():
        rows = await db.fetch(
            f"""{_SELECT} WHERE ($1::bigint IS NULL OR j.owner_id = $1)
                ORDER BY j.created_at DESC LIMIT $2""", owner_id, limit)
    return [EmbedJob(**dict(r)) for r in rows]


async def holdings(db: Executor, owner_id: int) -> tuple[int, int]:
    """(jobs, bytes their files hold) of the owner: what the quotas count."""
    async with translated():
        row = await db.fetchrow(
            """SELECT count(*) AS jobs,
                      coalesce(sum(input_bytes + results_bytes), 0)::bigint AS bytes
               FROM embed_jobs WHERE owner_id = $1""", owner_id)
    return int(row["jobs"]), int(row["bytes"])


async def start_run(db: Executor, job_id: UUID) -> EmbedJob | None:
    """A run (the first, or one resumed after a crash) begins: its rate counts from now."""
    async with translated():
        await db.execute(
            """UPDATE embed_jobs SET run_started_at = now(), run_started_done = done + failed
               WHERE id = $1""", job_id)
    return await get(db, job_id)


async def checkpoint(db: Executor, job_id: UUID, worker_id: str, *, done: int, failed: int,
                     tokens: int, input_offset: int, results_bytes: int,
                     dimension: int | None) -> bool:
    """Record progress, only while `worker_id` holds the job's task; False otherwise (the
    caller stops: another worker took it over). Returns whether cancel was asked."""
    async with translated():
        row = await db.fetchrow(
            """UPDATE embed_jobs j SET done = $3, failed = $4, tokens = $5, input_offset = $6,
                      results_bytes = $7, dimension = coalesce($8, j.dimension),
                      checkpoint_at = now()
               FROM tasks t
               WHERE j.id = $1 AND t.id = j.id AND t.worker_id = $2
                 AND t.status = 'processing'
               RETURNING j.cancel_requested""",
            job_id, worker_id, done, failed, tokens, input_offset, results_bytes, dimension)
    if row is None:
        raise LostJob(job_id)
    return bool(row["cancel_requested"])


class LostJob(Exception):
    """The job's task is no longer held by this worker."""


async def request_cancel(pool: asyncpg.Pool, job_id: UUID) -> str | None:
    """Cancel: a pending job's task is cancelled at once; a processing one is asked to stop
    (its worker ends it at its next checkpoint). Returns the task's status after."""
    async with translated(), transaction(pool) as c:
        await c.execute(
            "UPDATE embed_jobs SET cancel_requested = true WHERE id = $1", job_id)
        await c.execute(
            """UPDATE tasks SET status = 'canceled', detail = 'cancelled by its owner',
                   updated_at = now(), finished_at = now()
               WHERE id = $1 AND status = 'pending'""", job_id)
        status: str | None = await c.fetchval("SELECT status FROM tasks WHERE id = $1",
                                              job_id)
    return status


async def next_turn(db: Executor, job_id: UUID, worker_id: str) -> bool:
    """The holding worker ends its slice of the job: the task is pending again at its
    checkpoint, `enqueued_at` set (the caller enqueues it now), and the run is not counted
    as an attempt (attempts count runs that were cut short)."""
    async with translated():
        result: str = await db.execute(
            """UPDATE tasks SET status = 'pending', attempts = greatest(attempts - 1, 0),
                   worker_id = NULL, lease_until = NULL, enqueued_at = now(),
                   updated_at = now()
               WHERE id = $1 AND worker_id = $2 AND status = 'processing'""",
            job_id, worker_id)
    return result.endswith(" 1")


async def finish(pool: asyncpg.Pool, job_id: UUID, worker_id: str, status: str,
                 detail: str | None, retention_s: float) -> bool:
    """The job's task ends (only by the worker that holds it) and the job's expiry is set,
    in one transaction."""
    async with translated(), transaction(pool) as c:
        if not await tasks.finish(c, job_id, worker_id, status, detail):
            return False
        await c.execute(
            """UPDATE embed_jobs SET expires_at = now() + make_interval(secs => $2)
               WHERE id = $1""", job_id, retention_s)
    return True


async def expire_ended(db: Executor, retention_s: float) -> None:
    """Ended jobs without an expiry (cancelled while pending, failed on claim) get one."""
    async with translated():
        await db.execute(
            """UPDATE embed_jobs j SET expires_at = coalesce(t.finished_at, now())
                                                    + make_interval(secs => $1)
               FROM tasks t WHERE t.id = j.id AND j.expires_at IS NULL
                 AND t.status NOT IN ('pending', 'processing')""", retention_s)


async def list_expired(db: Executor, limit: int = 100) -> list[UUID]:
    async with translated():
        rows = await db.fetch(
            """SELECT j.id FROM embed_jobs j JOIN tasks t ON t.id = j.id
               WHERE j.expires_at < now() AND t.status NOT IN ('pending', 'processing')
               ORDER BY j.expires_at LIMIT $1""", limit)
    return [r["id"] for r in rows]


async def delete(db: Executor, job_id: UUID) -> None:
    """The job's task, and with it (ON DELETE CASCADE) its row."""
    async with translated():
        await db.execute("DELETE FROM tasks WHERE id = $1 AND kind = 'embed'", job_id)


async def known_ids(db: Executor, job_ids: list[UUID]) -> set[UUID]:
    async with translated():
        rows = await db.fetch("SELECT id FROM embed_jobs WHERE id = ANY($1::uuid[])", job_ids)
    return {r["id"] for r in rows}
