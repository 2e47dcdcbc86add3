"""Issue 7, must-show 1: kill -9 a worker at random moments of rollouts, 20 times.

Afterwards every task is terminal, the model serves from exactly one generation, no
orphan replica exists, and no task ran more often than its bound.
"""

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from db import deployments, replicas, tasks
from schemas.settings import Settings
from tests.conftest import Proc
from worker.runtimes.process import ProcessRuntime

KILLS = 20
MAX_ATTEMPTS = 3


async def _all_terminal(pool: asyncpg.Pool, model_id: UUID, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = await pool.fetch("SELECT id, status, attempts, detail FROM tasks "
                                "WHERE model_id = $1", model_id)
        if all(r["status"] not in ("pending", "processing") for r in rows):
            return rows
        await asyncio.sleep(0.25)
    raise TimeoutError("tasks still open after recovery")


async def _settled(pool: asyncpg.Pool, settings: Settings, model_id: UUID,
                   timeout_s: float) -> tuple[int, list[Any]]:
    """Wait until the only running replicas are those of the active generation."""
    runtime = ProcessRuntime(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        deployment = await deployments.get(pool, model_id)
        running = [r for r in await runtime.list() if r.running]
        live = await replicas.list_for_model(pool, model_id)
        gen = deployment.active_generation if deployment else None
        if (gen is not None and running and {r.generation for r in running} == {gen}
                and {r.generation for r in live} == {gen}):
            return gen, running
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled: active={gen} running="
                                 f"{[(r.generation, r.replica_id) for r in running]} "
                                 f"live={[(r.generation, r.state) for r in live]}")
        await asyncio.sleep(0.25)


async def _wait_processing(pool: asyncpg.Pool, task_id: str, timeout_s: float) -> None:
    """Until the task is claimed (or already ended: superseded or finished quickly)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = await tasks.get(pool, UUID(task_id))
        if row is not None and row.status != "pending":
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"task {task_id} was never claimed")


async def _post_deploy(http: aiohttp.ClientSession, api: str, ref: str,
                       headers: dict[str, str]) -> str:
    async with http.post(f"{api}/deploy", json={"embedding_model_id": ref},
                         headers=headers) as resp:
        assert resp.status == 202
        return str((await resp.json())["task_id"])


@pytest.mark.slow
async def test_kill_9_workers_mid_rollout(api: str, gateway: str, spawn: Callable[..., Proc],
                                          http: aiohttp.ClientSession, pool: asyncpg.Pool,
                                          settings: Settings, hashing_model: Any,
                                          admin_headers: dict[str, str]) -> None:
    model_id = await hashing_model("chaos", startup_delay_s=0.3)
    rng = random.Random(7)
    fast = {"lease_s": 2, "reconcile_interval_s": 0.3, "max_attempts": MAX_ATTEMPTS}
    phases_hit: Counter[str] = Counter()
    for _ in range(KILLS):
        worker = spawn("worker", **fast)
        task_id = await _post_deploy(http, api, "alice/chaos", admin_headers)
        await _wait_processing(pool, task_id, timeout_s=20)
        await asyncio.sleep(rng.uniform(0, 1.6))
        row = await tasks.get(pool, UUID(task_id))
        phases_hit[f"{row.status}/{row.phase}" if row else "?"] += 1
        worker.kill(signal.SIGKILL)
        worker.popen.wait()
    spawn("worker", **fast)
    rows = await _all_terminal(pool, model_id, timeout_s=90)
    generation, running = await _settled(pool, settings, model_id, timeout_s=30)
    async with http.post(f"{gateway}/serve/chaos/embed", json={"inputs": "alive"}) as resp:
        assert resp.status == 200
        serving = resp.headers["X-Greenroom-Replica"]
    assert serving in {str(r.replica_id) for r in running}
    statuses = Counter(r["status"] for r in rows)
    attempts = Counter(r["attempts"] for r in rows)
    print(f"\nchaos: {KILLS} kill -9 at {dict(phases_hit)}; tasks {dict(statuses)}; "
          f"attempts {dict(sorted(attempts.items()))}; serving generation {generation} "
          f"with {len(running)} replica(s), no orphans")
    assert max(attempts) <= MAX_ATTEMPTS
    assert all(r["detail"] for r in rows if r["status"] in ("failed", "canceled"))
