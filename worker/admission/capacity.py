"""What this worker's runtime may still place (issue 19): a memory budget, checked before a
rollout starts replicas, so a rollout that does not fit fails fast instead of starting
replicas until the machine swaps.

Budget: `capacity_memory_mb` if set, else the Docker Engine's memory (`docker info`) for
the docker runtime, else `capacity_share` of this machine's memory (/proc/meminfo) for the
process runtime. Use: the memory of every running replica the runtime lists (a
container's limit is its replica's memory), as recorded when it was placed. A green
rollout needs room for its new generation while the old one still runs.

The check and the starts it admits run under one lock per worker process, so this
worker's concurrent rollouts cannot both take the last room; several workers placing
on one host each see the others' replicas only once started.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog

from db import replicas
from worker.context import WorkerContext
from worker.runtimes.docker import DockerRuntime

log = structlog.get_logger(__name__)
MEMINFO = Path("/proc/meminfo")
_PLACING = asyncio.Lock()


class NoCapacity(Exception):
    """The runtime has no room for what a rollout needs; the message gives the figures."""


def machine_memory_mb(meminfo: Path = MEMINFO) -> int:
    """MemTotal of this machine, in MB."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


async def budget_mb(ctx: WorkerContext) -> int:
    if ctx.settings.capacity_memory_mb is not None:
        return ctx.settings.capacity_memory_mb
    if isinstance(ctx.runtime, DockerRuntime):
        return await ctx.runtime.engine_memory_mb()
    return int(machine_memory_mb() * ctx.settings.capacity_share)


async def used_mb(ctx: WorkerContext) -> int:
    """Memory of the running replicas this worker's runtime holds."""
    running = [info.replica_id for info in await ctx.runtime.list() if info.running]
    rows = {r.id: r for r in await replicas.get_many(ctx.pool, running)}
    return sum((row.memory_mb if (row := rows.get(rid)) and row.memory_mb
                else ctx.settings.replica_memory_mb) for rid in running)


async def room(ctx: WorkerContext) -> tuple[int, int]:
    """(MB left, MB budget)."""
    budget = await budget_mb(ctx)
    return budget - await used_mb(ctx), budget


@asynccontextmanager
async def placing(ctx: WorkerContext, needed_mb: int) -> AsyncIterator[None]:
    """Admit starting replicas that need `needed_mb`, or raise NoCapacity; the starts go
    inside the block."""
    async with _PLACING:
        left, budget = await room(ctx)
        if needed_mb > left:
            log.warning("no_capacity", needed_mb=needed_mb, left_mb=left, budget_mb=budget)
            raise NoCapacity(f"needs {needed_mb:,} MB, {max(left, 0):,} MB left of "
                             f"{budget:,} MB budget")
        yield
