"""Shared steps of the autoscaling tests: deploy with the test knobs, count, wait, measure."""

import asyncio
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg

from db import events, replicas
from tests.conftest import wait_task

__all__ = ["wait_task"]

# 200 ms, not less: each request also costs the gateway, the replica and the load client
# CPU, and on two shared cores 60 requests a second (3x of a 100 ms replica) made the CPU,
# not the replicas, the limit; at 200 ms the 3x load is 30 a second, and the machine's
# scheduling jitter (tens of ms) is a smaller share of the unloaded latency.
SERVICE_TIME_MS, SLOTS = 200, 2
# One replica serves SLOTS / service time requests a second (the model server's test knobs).
CAPACITY = SLOTS / (SERVICE_TIME_MS / 1000)
# The model's source carries them (a deployment's env may not set MODEL_SERVER_*).
KNOBS = {"test_service_time_ms": SERVICE_TIME_MS, "test_concurrency": SLOTS}
# Short windows so the suite stays fast; target = the replica's slots.
FAST_AUTOSCALING = {
    "autoscaling_enabled": True, "autoscaling_target_concurrency": SLOTS,
    "autoscaling_target_utilization": 0.8, "autoscaling_stable_window_s": 6,
    "autoscaling_panic_window_s": 2, "autoscaling_scale_down_delay_s": 4,
    "autoscaling_scale_to_zero_grace_s": 4,
}


async def deploy(http: aiohttp.ClientSession, api: str, model: str,
                 config: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{api}/deploy", json={"embedding_model_id": model,
                                                "config": config}) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    return await wait_task(http, api, "deploy", task["task_id"])


async def ready_count(pool: asyncpg.Pool, model_id: UUID) -> dict[int, int]:
    """Ready replicas by generation."""
    found: dict[int, int] = {}
    for r in await replicas.list_for_model(pool, model_id):
        if r.state == "ready":
            found[r.generation] = found.get(r.generation, 0) + 1
    return found


async def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Poll an async predicate; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} not within {timeout_s:g} s")


async def decisions(pool: asyncpg.Pool, model_id: UUID) -> list[str]:
    """The autoscaler's decision events, oldest first."""
    found = await events.list_recent(pool, model_id, 200)
    return [e.message for e in sorted(found, key=lambda e: e.created_at)
            if e.message.startswith("scaled ")]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def queue_gone_at(starts: list[float], latencies: list[float], after: float,
                  slots: int) -> float:
    """The first moment from `after` on when requests sent and not yet answered are at most
    `slots` (every replica's slots together): nothing waits in a queue any more."""
    changes = sorted([(s, 1) for s in starts] + [(s + lat, -1)
                                                  for s, lat in zip(starts, latencies,
                                                                    strict=True)])
    outstanding = 0
    for at, step in changes:
        outstanding += step
        if at >= after and outstanding <= slots:
            return at
    return max(s + lat for s, lat in zip(starts, latencies, strict=True))
