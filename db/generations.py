"""A deployment's generations (issue 26): each pins the revision and the config it started
from, so every replica of it, whenever it starts, loads exactly that revision."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor

_COLUMNS = """g.model_id, g.generation, g.revision, g.config, g.rollback_of, g.served_at,
    g.created_at, v.source, v.digest, v.files_removed_at"""


@dataclass(frozen=True, slots=True)
class Generation:
    model_id: UUID
    generation: int
    revision: int
    config: dict[str, Any]
    rollback_of: int | None
    served_at: datetime | None
    created_at: datetime
    # The pinned revision's source, digest, and when its files were removed (None: kept).
    source: dict[str, Any]
    digest: str
    files_removed_at: datetime | None


def _generation(row: Any) -> Generation | None:
    return Generation(**dict(row)) if row is not None else None


async def pin(db: Executor, model_id: UUID, generation: int, revision: int,
              config: dict[str, Any], rollback_of: int | None = None) -> None:
    async with translated():
        await db.execute(
            """INSERT INTO deployment_generations (model_id, generation, revision, config,
                                                  rollback_of)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (model_id, generation) DO UPDATE SET revision = EXCLUDED.revision,
                   config = EXCLUDED.config, rollback_of = EXCLUDED.rollback_of""",
            model_id, generation, revision, config, rollback_of)


async def get(db: Executor, model_id: UUID, generation: int) -> Generation | None:
    async with translated():
        return _generation(await db.fetchrow(
            f"""SELECT {_COLUMNS} FROM deployment_generations g
                JOIN model_revisions v ON v.model_id = g.model_id AND v.number = g.revision
                WHERE g.model_id = $1 AND g.generation = $2""", model_id, generation))


async def pinned_source(db: Executor, model_id: UUID, generation: int) -> dict[str, Any] | None:
    """The source generation `generation` pinned (None: a generation from before pinning)."""
    async with translated():
        source: dict[str, Any] | None = await db.fetchval(
            """SELECT v.source FROM deployment_generations g
               JOIN model_revisions v ON v.model_id = g.model_id AND v.number = g.revision
               WHERE g.model_id = $1 AND g.generation = $2""", model_id, generation)
    return source


async def mark_served(db: Executor, model_id: UUID, generation: int) -> None:
    async with translated():
        await db.execute(
            """UPDATE deployment_generations SET served_at = coalesce(served_at, now())
               WHERE model_id = $1 AND generation = $2""", model_id, generation)


async def list_for_model(db: Executor, model_id: UUID, limit: int = 50) -> list[Generation]:
    """The model's generations, newest first."""
    async with translated():
        rows = await db.fetch(
            f"""SELECT {_COLUMNS} FROM deployment_generations g
                JOIN model_revisions v ON v.model_id = g.model_id AND v.number = g.revision
                WHERE g.model_id = $1 ORDER BY g.generation DESC LIMIT $2""",
            model_id, limit)
    return [Generation(**dict(r)) for r in rows]


async def served_before(db: Executor, model_id: UUID, generation: int) -> int | None:
    """The newest generation below `generation` that served: a rollback's default target."""
    async with translated():
        found: int | None = await db.fetchval(
            """SELECT max(generation) FROM deployment_generations
               WHERE model_id = $1 AND generation < $2 AND served_at IS NOT NULL""",
            model_id, generation)
    return found
