"""Workflow dependencies: a model that uses other models (model_dependencies)."""

from uuid import UUID

from db.errors import translated
from db.pool import Executor
from schemas.tasks import ACTIVE_DEPLOYMENT_STATES

# A deployment in one of these states serves, or is about to.
ACTIVE_STATES = ACTIVE_DEPLOYMENT_STATES


async def add(db: Executor, model_id: UUID, dependency_ids: list[UUID]) -> None:
    async with translated():
        await db.executemany(
            """INSERT INTO model_dependencies (model_id, dependency_id) VALUES ($1, $2)
               ON CONFLICT DO NOTHING""",
            [(model_id, dep) for dep in dependency_ids],
        )


async def list_for_model(db: Executor, model_id: UUID) -> list[UUID]:
    async with translated():
        rows = await db.fetch(
            "SELECT dependency_id FROM model_dependencies WHERE model_id = $1 "
            "ORDER BY dependency_id", model_id)
    return [r["dependency_id"] for r in rows]


async def active_dependents(db: Executor, model_id: UUID) -> list[tuple[UUID, int]]:
    """(model, its owner) of each model with an active deployment that depends on
    `model_id`."""
    async with translated():
        rows = await db.fetch(
            """SELECT d.model_id, m.owner_id FROM model_dependencies d
               JOIN deployments dep ON dep.model_id = d.model_id
               JOIN models m ON m.id = d.model_id
               WHERE d.dependency_id = $1 AND dep.status = ANY($2::text[])""",
            model_id, list(ACTIVE_STATES))
    return [(r["model_id"], r["owner_id"]) for r in rows]
