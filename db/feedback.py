"""Feedback events recorded through the gateway, read back by GET /feedbacks."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor

# Served by feedback_model_event_recent_idx (migration 002): an index range scan, no sort.
_LATEST = """SELECT id, event, payload, created_at FROM feedback
    WHERE model_id = $1 AND event = $2
    ORDER BY created_at DESC, id DESC LIMIT $3"""


@dataclass(frozen=True, slots=True)
class Feedback:
    id: int
    event: str
    payload: dict[str, Any]
    created_at: datetime


async def add(db: Executor, model_id: UUID, event: str, payload: dict[str, Any]) -> Feedback:
    async with translated():
        row = await db.fetchrow(
            """INSERT INTO feedback (model_id, event, payload) VALUES ($1, $2, $3)
               RETURNING id, event, payload, created_at""",
            model_id, event, payload)
    return Feedback(**dict(row))


async def latest(db: Executor, model_id: UUID, event: str, limit: int) -> list[Feedback]:
    """The newest `limit` events of one kind for one model, newest first."""
    async with translated():
        rows = await db.fetch(_LATEST, model_id, event, limit)
    return [Feedback(**dict(r)) for r in rows]


async def explain_latest(db: Executor, model_id: UUID, event: str, limit: int) -> list[str]:
    """EXPLAIN of the `latest` query, for tests and operators checking the index is used."""
    async with translated():
        rows = await db.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {_LATEST}", model_id, event, limit)
    return [r[0] for r in rows]
