"""What `greenroom up` restores: deployments that served before it started (issue 19)."""

from datetime import datetime

from db.errors import translated
from db.pool import Executor


async def serving_before(db: Executor, since: datetime) -> list[str]:
    """Names of serving deployments whose active generation has replicas older than `since`."""
    async with translated():
        rows = await db.fetch(
            """SELECT d.name FROM deployments d
               WHERE d.active_generation IS NOT NULL AND EXISTS (
                   SELECT 1 FROM replicas r WHERE r.model_id = d.model_id
                     AND r.generation = d.active_generation AND r.created_at < $1)
               ORDER BY d.name""",
            since,
        )
    return [r["name"] for r in rows]


async def ready_since(db: Executor, since: datetime) -> set[str]:
    """Names of deployments with a ready replica of their active generation started since."""
    async with translated():
        rows = await db.fetch(
            """SELECT DISTINCT d.name FROM deployments d
               JOIN replicas r ON r.model_id = d.model_id
                    AND r.generation = d.active_generation
               WHERE r.state = 'ready' AND r.created_at >= $1""",
            since,
        )
    return {r["name"] for r in rows}
