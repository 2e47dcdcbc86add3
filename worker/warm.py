"""The previous generation's warm window (issue 26): when it closes, its replicas drain and
are removed. Run by every reconciler; one of them wins each deployment (the update is
conditional and skips rows another holds)."""

import structlog

from db import deployments, events, replicas
from db.pool import transaction
from schemas.tasks import ReplicaState
from worker import replica_lifecycle
from worker.context import WorkerContext
from worker.runtimes.base import manages

log = structlog.get_logger(__name__)


async def expire(ctx: WorkerContext) -> int:
    """Close every window that has passed; returns how many replicas were marked to go."""
    async with transaction(ctx.pool) as conn:
        ended = await deployments.expire_warm(conn)
    count = 0
    for model_id, ids in ended:
        if not ids:
            continue
        await events.add(ctx.pool, model_id, "info",
                         f"the previous generation's warm window closed; {len(ids)} "
                         "replica(s) drain and are removed")
        rows = await replicas.get_many(ctx.pool, ids)
        # Not routed since the flip (keep_previous_s ago): nothing is in flight on them.
        mine = [r.id for r in rows if manages(ctx.runtime, r.endpoint)]
        await replica_lifecycle.remove(ctx, mine, ReplicaState.stopped,
                                       ctx.settings.stop_grace_s)
        count += len(ids)
        log.info("warm_window_closed", model=str(model_id), replicas=len(ids))
    return count
