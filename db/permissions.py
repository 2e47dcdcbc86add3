"""Explicit per-user grants on models (model_permissions)."""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from db.errors import translated
from db.pool import Executor


@dataclass(frozen=True, slots=True)
class Grant:
    model_id: UUID
    user_id: int
    username: str
    permission: str
    expires_at: datetime | None


_SELECT = """SELECT p.model_id, p.user_id, u.username, p.permission, p.expires_at
    FROM model_permissions p JOIN users u ON u.id = p.user_id"""


async def get(db: Executor, model_id: UUID, user_id: int) -> Grant | None:
    """The grant, expired or not: callers decide what an expired one means."""
    async with translated():
        row = await db.fetchrow(f"{_SELECT} WHERE p.model_id = $1 AND p.user_id = $2",
                                model_id, user_id)
    return Grant(**dict(row)) if row is not None else None


async def upsert(db: Executor, model_id: UUID, user_id: int, permission: str,
                 expires_at: datetime | None) -> None:
    async with translated():
        await db.execute(
            """INSERT INTO model_permissions (model_id, user_id, permission, expires_at)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (model_id, user_id) DO UPDATE
               SET permission = EXCLUDED.permission, expires_at = EXCLUDED.expires_at""",
            model_id, user_id, permission, expires_at,
        )


async def delete(db: Executor, model_id: UUID, user_id: int) -> bool:
    async with translated():
        result: str = await db.execute(
            "DELETE FROM model_permissions WHERE model_id = $1 AND user_id = $2",
            model_id, user_id)
    return result.endswith(" 1")


async def list_for_model(db: Executor, model_id: UUID) -> list[Grant]:
    async with translated():
        rows = await db.fetch(f"{_SELECT} WHERE p.model_id = $1 ORDER BY u.username", model_id)
    return [Grant(**dict(r)) for r in rows]
