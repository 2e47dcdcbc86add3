"""Wait for a generation's replicas to answer /health, failing fast if one dies."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import aiohttp

from worker.runtimes.base import Runtime, StartedReplica

# How often a starting replica's /health is asked: a replica that just became healthy
# waits half of it on average before it may join the routing table.
POLL_S = 0.05


class ReplicaFailed(Exception):
    """A replica exited or never became healthy; the message is the user-facing reason."""

    def __init__(self, message: str, runtime_ref: str) -> None:
        super().__init__(message)
        self.runtime_ref = runtime_ref


async def _healthy(http: aiohttp.ClientSession, endpoint: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(f"{endpoint}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    return False


async def wait_ready(runtime: Runtime, http: aiohttp.ClientSession, replica: StartedReplica,
                     deadline: float, timeout_s: float | None = None) -> None:
    """Return once `replica` is healthy; raise ReplicaFailed if it exits or `deadline` passes.

    `timeout_s`, the deadline's length, only goes into the message.
    """
    loop = asyncio.get_running_loop()
    while not await _healthy(http, replica.endpoint):
        info = await runtime.inspect(replica.runtime_ref)
        if info is None or not info.running:
            reason = info.describe_exit() if info else "disappeared"
            raise ReplicaFailed(f"replica {reason} before becoming healthy", replica.runtime_ref)
        if loop.time() > deadline:
            within = f" ({timeout_s:g}s)" if timeout_s else ""
            raise ReplicaFailed(f"replica did not become healthy before the deploy deadline"
                                f"{within}", replica.runtime_ref)
        await asyncio.sleep(POLL_S)


async def wait_all_ready(runtime: Runtime, http: aiohttp.ClientSession,
                         replicas: list[StartedReplica], timeout_s: float,
                         on_ready: Callable[[StartedReplica], Awaitable[None]] | None = None,
                         ) -> None:
    """Wait for every replica; `on_ready` runs with each one as it becomes healthy."""
    deadline = asyncio.get_running_loop().time() + timeout_s

    async def one(replica: StartedReplica) -> None:
        await wait_ready(runtime, http, replica, deadline, timeout_s)
        if on_ready is not None:
            await on_ready(replica)

    async with asyncio.TaskGroup() as group:
        for replica in replicas:
            group.create_task(one(replica))
