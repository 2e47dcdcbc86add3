"""Tell the gateways that a deployment's routes changed (they reload it from Postgres)."""

import contextlib
from uuid import UUID

from schemas.queue import ROUTES_CHANNEL, RoutesChanged
from worker.context import WorkerContext


async def publish_routes(ctx: WorkerContext, model_id: UUID) -> None:
    """Gateways also poll, so a lost message only delays the swap."""
    with contextlib.suppress(Exception):
        await ctx.redis.publish(ROUTES_CHANNEL, RoutesChanged(model_id).encode())
