"""Tasks: the outbox rows of every deploy, delete and scale; one worker claims each (in
fair turns per owner: `claim`)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from db.errors import translated
from db.pool import Executor, transaction

_COLUMNS = """id, kind, model_id, status, phase, request, request_hash, metadata, detail,
    attempts, idempotency_key, enqueued_at, lease_until, worker_id, created_by, started_at,
    created_at,
    updated_at, finished_at"""
_SELECT = f"SELECT {_COLUMNS} FROM tasks"


@dataclass(frozen=True, slots=True)
class Task:
    id: UUID
    kind: str
    model_id: UUID
    status: str
    phase: str | None
    request: dict[str, Any]
    request_hash: str
    metadata: dict[str, Any]
    detail: str | None
    attempts: int
    idempotency_key: str | None
    enqueued_at: datetime | None
    lease_until: datetime | None
    worker_id: str | None
    created_by: int | None
    started_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _task(row: Any) -> Task | None:
    return Task(**dict(row)) if row is not None else None


async def insert(db: Executor, *, task_id: UUID, kind: str, model_id: UUID,
                 request: dict[str, Any], request_hash: str, idempotency_key: str | None,
                 created_by: int | None, metadata: dict[str, Any],
                 enqueued: bool = False) -> Task:
    """Insert a pending task and cancel the model's older pending tasks (one transaction);
    a scale cancels only older pending scales. `enqueued` sets `enqueued_at` now, for a
    caller that enqueues right after and clears it (`mark_unenqueued`) if that fails."""
    async with translated():
        row = await db.fetchrow(
            f"""
            WITH superseded AS (
                UPDATE tasks SET status = 'canceled', detail = 'superseded by ' || $1::uuid::text,
                       updated_at = now(), finished_at = now()
                WHERE model_id = $3 AND status = 'pending'
                  -- a scale replaces only an older pending scale, never a deploy or delete
                  AND ($2 <> 'scale' OR kind = 'scale')
                  -- an embed job is never superseded, nor supersedes (issue 30)
                  AND $2 <> 'embed' AND kind <> 'embed'
            )
            INSERT INTO tasks (id, kind, model_id, request, request_hash, idempotency_key,
                               created_by, metadata, enqueued_at)
            VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9 THEN now() END)
            RETURNING {_COLUMNS}
            """,
            task_id, kind, model_id, request, request_hash, idempotency_key, created_by,
            metadata, enqueued,
        )
    task = _task(row)
    assert task is not None
    return task


async def get(db: Executor, task_id: UUID, kind: str | None = None) -> Task | None:
    async with translated():
        row = await db.fetchrow(
            f"{_SELECT} WHERE id = $1 AND ($2::text IS NULL OR kind = $2)", task_id, kind
        )
    return _task(row)


async def get_by_idempotency_key(db: Executor, key: str, created_by: int | None) -> Task | None:
    """The task `created_by` made with the key (keys are per user; None: tasks made without
    a user share one scope, as the unique index `tasks_idempotency_key` has it)."""
    async with translated():
        return _task(await db.fetchrow(
            f"{_SELECT} WHERE COALESCE(created_by, 0) = $2 AND idempotency_key = $1",
            key, created_by or 0))


async def latest_for_model(db: Executor, model_id: UUID, kind: str) -> Task | None:
    async with translated():
        row = await db.fetchrow(
            f"{_SELECT} WHERE model_id = $1 AND kind = $2 ORDER BY created_at DESC LIMIT 1",
            model_id, kind,
        )
    return _task(row)


async def mark_enqueued(db: Executor, task_id: UUID) -> None:
    async with translated():
        await db.execute("UPDATE tasks SET enqueued_at = now() WHERE id = $1", task_id)


async def mark_unenqueued(db: Executor, task_id: UUID) -> None:
    """The enqueue after an optimistic `insert(enqueued=True)` failed: the reconciler's now."""
    async with translated():
        await db.execute("UPDATE tasks SET enqueued_at = NULL WHERE id = $1", task_id)


# pg_advisory_xact_lock(key1, key2) in `claim`: key1 names this use; key2 is the owner's id.
_LOCK_SPACE = 0x6772_6F6C  # "grol"


async def claim(pool: asyncpg.Pool, task_id: UUID, worker_id: str, lease_s: float,
                per_owner: int) -> tuple[Task | None, bool]:
    """pending → processing for this worker: (the claimed task, or None if another
    delivery already took it; True when it must wait its owner's turn instead).

    Fair admission (issue 19): a deploy is claimed only while its model's owner has fewer
    than `per_owner` rollouts processing *and* fewer than that many older deploys of theirs
    waiting that could run now (older pending deploys of a model with no task
    processing). So one owner's queue cannot take every worker slot, and that owner's
    deploys start in the order they were accepted. Deletes and scales are never held back:
    they free resources. The count and the claim run in one transaction under an advisory
    lock per owner, so workers claiming for the same owner at once cannot pass the bound.

    Raises UniqueViolation(tasks_one_processing_per_model) while another task of the
    same model is processing. `started_at` is the clock at the update, not `now()`: the
    transaction starts before it, and the update may wait on the unique index for the
    model's previous task to commit its finish, so `now()` could read earlier than that
    task's `finished_at`.
    """
    async with transaction(pool) as conn:
        row = await conn.fetchrow(
            """SELECT t.kind, t.status, t.created_at, m.owner_id FROM tasks t
               JOIN models m ON m.id = t.model_id WHERE t.id = $1""", task_id)
        if row is None or row["status"] != "pending":
            return None, False
        if row["kind"] == "deploy":
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK_SPACE,
                               row["owner_id"] % 2**31)
            if await _rollouts_ahead(conn, row["owner_id"], row["created_at"]) >= per_owner:
                return None, True
        claimed = await conn.fetchrow(
            f"""UPDATE tasks SET status = 'processing', attempts = attempts + 1,
                   worker_id = $2, lease_until = now() + make_interval(secs => $3),
                   started_at = coalesce(started_at, clock_timestamp()), updated_at = now()
               WHERE id = $1 AND status = 'pending' RETURNING {_COLUMNS}""",
            task_id, worker_id, lease_s,
        )
    return _task(claimed), False


async def _rollouts_ahead(conn: asyncpg.Connection, owner_id: int, created_at: datetime) -> int:
    """The owner's rollouts processing, plus their older deploys that could start now."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM tasks t JOIN models m ON m.id = t.model_id
           WHERE m.owner_id = $1 AND t.kind = 'deploy'
             AND (t.status = 'processing'
                  OR (t.status = 'pending' AND t.created_at < $2
                      AND NOT EXISTS (SELECT 1 FROM tasks b WHERE b.model_id = t.model_id
                                      AND b.status = 'processing')))""",
        owner_id, created_at,
    )
    return count


async def renew_lease(db: Executor, task_id: UUID, worker_id: str, lease_s: float) -> bool:
    """Extend the lease; False when this worker no longer holds the task."""
    async with translated():
        result: str = await db.execute(
            """UPDATE tasks SET lease_until = now() + make_interval(secs => $3)
               WHERE id = $1 AND worker_id = $2 AND status = 'processing'""",
            task_id, worker_id, lease_s,
        )
    return result.endswith(" 1")


def _merged(param: str) -> str:
    """`metadata || param`, with `rollout` merged one level deeper: the compatibility gate
    (`rollout.compatibility`) and a canary or shadow (`rollout.steps`, ...) each write
    their own part of it."""
    return (f"metadata || {param} || CASE WHEN jsonb_typeof(metadata->'rollout') = 'object'"
            f" AND jsonb_typeof({param}->'rollout') = 'object' THEN jsonb_build_object("
            f"'rollout', (metadata->'rollout') || ({param}->'rollout')) ELSE '{{}}'::jsonb END")


async def set_phase(db: Executor, task_id: UUID, worker_id: str, phase: str | None,
                    metadata: dict[str, Any] | None = None) -> bool:
    """Record progress; metadata is merged into the task's metadata."""
    async with translated():
        result: str = await db.execute(
            f"""UPDATE tasks SET phase = $3, metadata = {_merged("$4")}, updated_at = now()
               WHERE id = $1 AND worker_id = $2 AND status = 'processing'""",
            task_id, worker_id, phase, metadata or {},
        )
    return result.endswith(" 1")


async def finish(db: Executor, task_id: UUID, worker_id: str, status: str,
                 detail: str | None = None, metadata: dict[str, Any] | None = None) -> bool:
    """processing → a terminal status, only by the worker that holds it."""
    async with translated():
        result: str = await db.execute(
            f"""UPDATE tasks SET status = $3, detail = $4, metadata = {_merged("$5")},
                   lease_until = NULL, updated_at = now(), finished_at = now()
               WHERE id = $1 AND worker_id = $2 AND status = 'processing'""",
            task_id, worker_id, status, detail, metadata or {},
        )
    return result.endswith(" 1")


async def finish_pending(db: Executor, task_id: UUID, status: str, detail: str) -> bool:
    """pending → a terminal status (refused before any work, or canceled)."""
    async with translated():
        result: str = await db.execute(
            """UPDATE tasks SET status = $2, detail = $3, updated_at = now(), finished_at = now()
               WHERE id = $1 AND status = 'pending'""",
            task_id, status, detail,
        )
    return result.endswith(" 1")


async def list_unenqueued(db: Executor, older_than_s: float, limit: int = 500) -> list[Task]:
    """Pending tasks that never reached Redis, or reached it long ago (maybe lost there)."""
    async with translated():
        rows = await db.fetch(
            f"""{_SELECT} WHERE status = 'pending'
                 AND (enqueued_at IS NULL
                      OR enqueued_at < now() - make_interval(secs => $1))
               ORDER BY created_at LIMIT $2""",
            older_than_s, limit,
        )
    return [Task(**dict(r)) for r in rows]


async def list_expired_leases(db: Executor, limit: int = 100) -> list[Task]:
    async with translated():
        rows = await db.fetch(
            f"""{_SELECT} WHERE status = 'processing' AND lease_until < now()
                ORDER BY lease_until LIMIT $1""",
            limit,
        )
    return [Task(**dict(r)) for r in rows]


# An embed job neither has nor is a newer task (issue 30): it runs beside the others.
_NEWER_TASK = """(SELECT n.id FROM tasks n WHERE n.model_id = tasks.model_id
                    AND n.created_at > tasks.created_at
                    AND n.kind <> 'embed' AND tasks.kind <> 'embed'
                    ORDER BY n.created_at DESC LIMIT 1)"""


# A processing task given up by its worker: back to pending while attempts remain, else
# failed with $4; canceled instead when the model has a newer task (running it now would
# undo the newer one). $1 the task, $2 its worker, $3 max attempts; the caller adds the
# condition on who may give it up.
_GIVE_BACK = f"""WITH t AS (SELECT id, {_NEWER_TASK} AS newer FROM tasks WHERE id = $1)
   UPDATE tasks SET
       status = CASE WHEN t.newer IS NOT NULL THEN 'canceled'
                     WHEN attempts < $3 THEN 'pending' ELSE 'failed' END,
       detail = CASE WHEN t.newer IS NOT NULL THEN 'superseded by ' || t.newer
                     WHEN attempts < $3 THEN NULL ELSE $4 END,
       finished_at = CASE WHEN t.newer IS NULL AND attempts < $3 THEN NULL ELSE now() END,
       phase = NULL, lease_until = NULL, enqueued_at = NULL, updated_at = now(){{worker}}
   FROM t WHERE tasks.id = t.id AND status = 'processing' AND {{holder}}
   RETURNING tasks.status"""


async def release_expired(db: Executor, task_id: UUID, worker_id: str | None,
                          max_attempts: int, detail: str) -> str | None:
    """A dead worker's task: back to pending while attempts remain, else failed; canceled
    if the model has a newer task. Conditional on the lease still being expired and held by
    `worker_id`, so many reconcilers can race safely. Returns the new status, or None if
    another won.
    """
    sql = _GIVE_BACK.format(worker="", holder="worker_id IS NOT DISTINCT FROM $2 "
                                               "AND lease_until < now()")
    async with translated():
        status: str | None = await db.fetchval(sql, task_id, worker_id, max_attempts, detail)
    return status


async def has_open_task(db: Executor, model_id: UUID) -> bool:
    async with translated():
        return bool(await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE model_id = $1 AND kind <> 'embed' "
            "AND status IN ('pending', 'processing'))", model_id,
        ))


async def models_with_processing_task(db: Executor) -> set[UUID]:
    async with translated():
        rows = await db.fetch("SELECT model_id FROM tasks WHERE status = 'processing' "
                              "AND kind <> 'embed'")
    return {r["model_id"] for r in rows}


async def hand_back(db: Executor, task_id: UUID, worker_id: str, max_attempts: int,
                    detail: str) -> str | None:
    """processing → pending by the worker that holds it (shutting down, or its job ran past
    arq's timeout), to be retried; failed with `detail` once it has been claimed
    `max_attempts` times, so a task that is always handed back ends; canceled instead if a
    newer task of the model exists. Returns the new status."""
    sql = _GIVE_BACK.format(worker=", worker_id = NULL", holder="worker_id = $2")
    async with translated():
        status: str | None = await db.fetchval(sql, task_id, worker_id, max_attempts, detail)
    return status
