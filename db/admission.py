"""Fair admission of rollouts (issue 19): a bounded number per owner at once, in order.

A deploy task is claimed only while its model's owner has fewer than `per_owner`
rollouts processing *and* fewer than that many older deploys of theirs waiting that
could run now (older pending deploys of a model with no task processing). So one
owner's queue cannot take every worker slot, and that owner's deploys start in the
order they were accepted. Deletes and scales are never held back: they free resources.

The count and the claim run in one transaction under an advisory lock per owner, so
workers claiming for the same owner at once cannot pass the bound.
"""

from datetime import datetime
from uuid import UUID

import asyncpg

from db import tasks
from db.errors import translated
from db.pool import transaction
from db.tasks import Task

# pg_advisory_xact_lock(key1, key2): key1 names this use; key2 is the owner's id.
_LOCK_SPACE = 0x6772_6F6C  # "grol"


async def claim(pool: asyncpg.Pool, task_id: UUID, worker_id: str, lease_s: float,
                per_owner: int) -> tuple[Task | None, bool]:
    """(the claimed task or None, True when it must wait its owner's turn).

    Raises UniqueViolation(tasks_one_processing_per_model) like `tasks.claim`.
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
            if await _ahead(conn, row["owner_id"], row["created_at"]) >= per_owner:
                return None, True
        return await tasks.claim(conn, task_id, worker_id, lease_s), False


async def _ahead(conn: asyncpg.Connection, owner_id: int, created_at: datetime) -> int:
    """The owner's rollouts processing, plus their older deploys that could start now."""
    async with translated():
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
