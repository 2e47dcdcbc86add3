"""Keep a claimed task's lease alive while its work runs."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import UUID

import structlog

from db import tasks
from db.errors import DatabaseError
from worker.context import WorkerContext

log = structlog.get_logger(__name__)


class LeaseLost(Exception):
    """Another worker or the reconciler took the task; this worker must stop touching it."""


async def _renew(ctx: WorkerContext, task_id: UUID, owner: asyncio.Task[object]) -> None:
    interval = ctx.settings.lease_s / 3
    while True:
        await asyncio.sleep(interval)
        try:
            held = await tasks.renew_lease(ctx.pool, task_id, ctx.worker_id, ctx.settings.lease_s)
        except DatabaseError as exc:
            log.warning("lease_renew_failed", task=str(task_id), error=str(exc))
            continue
        if not held:
            log.error("lease_lost", task=str(task_id))
            owner.cancel(msg="lease lost")
            return


@contextlib.asynccontextmanager
async def held_lease(ctx: WorkerContext, task_id: UUID) -> AsyncIterator[None]:
    """Renew the lease in the background; cancel the body if the lease is lost."""
    owner = asyncio.current_task()
    assert owner is not None
    renewer = asyncio.create_task(_renew(ctx, task_id, owner))
    try:
        yield
    except asyncio.CancelledError as exc:
        if renewer.done() and not renewer.cancelled():
            raise LeaseLost(str(task_id)) from exc
        raise
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
