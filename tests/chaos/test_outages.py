"""Issue 7, must-shows 2 and 3: Redis flushed and Postgres restarted under load lose nothing."""

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from db import deployments, owner_quotas, replicas, users
from db.migrate import apply_migrations
from db.pool import create_pool
from launch.embedded import start_postgres
from schemas.settings import Settings
from tests.conftest import Proc
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

MODELS = 20
TASKS = 200


async def _wait_terminal(pool: asyncpg.Pool, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = await pool.fetch("SELECT id, kind, model_id, status, detail, created_at "
                                "FROM tasks ORDER BY created_at")
        if all(r["status"] not in ("pending", "processing") for r in rows):
            return rows
        await asyncio.sleep(0.5)
    open_ = [(r["status"]) for r in rows if r["status"] in ("pending", "processing")]
    raise TimeoutError(f"{len(open_)} tasks still open")


async def _check_final_state(pool: asyncpg.Pool, rows: list[Any]) -> None:
    """Each model ends as its last accepted task said: deployed and serving, or stopped."""
    last: dict[UUID, Any] = {}
    for row in rows:
        last[row["model_id"]] = row
    for model_id, task in last.items():
        assert task["status"] == "done", dict(task)
        deployment = await deployments.get(pool, model_id)
        live = await replicas.list_for_model(pool, model_id)
        if task["kind"] == "deploy":
            assert deployment and deployment.status == "complete"
            assert {r.generation for r in live} == {deployment.active_generation}
        else:
            assert live == [] and (deployment is None or deployment.status == "stopped")


@pytest.mark.slow
async def test_redis_flushed_while_200_tasks_are_in_flight(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        settings: Settings, hashing_model: Any, admin_headers: dict[str, str]) -> None:
    for i in range(MODELS):
        await hashing_model(f"m{i}")
    owner = await users.get_by_name(pool, "alice")
    assert owner is not None  # all MODELS deploy at once: above the default quota
    await owner_quotas.set_overrides(pool, owner.id, {
        "max_deployments": MODELS, "max_replicas": MODELS, "max_memory_mb": MODELS * 1024})
    fast = {"reconcile_interval_s": 0.5}
    spawn("worker", **fast)
    spawn("worker", **fast)
    rng = random.Random(11)
    redis = Redis.from_url(settings.require_redis_url())
    for i in range(TASKS):
        kind = "deploy" if rng.random() < 0.7 else "delete"
        async with http.post(f"{api}/{kind}", json={"embedding_model_id": f"alice/m{i % MODELS}"},
                             headers=admin_headers) as resp:
            assert resp.status == 202
        if i == TASKS // 2:
            await redis.flushall()
        await asyncio.sleep(0.02)
    await redis.flushall()
    await redis.aclose()
    rows = await _wait_terminal(pool, timeout_s=150)
    await _check_final_state(pool, rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(f"\nredis flushed twice during {TASKS} tasks over {MODELS} models: {counts}")


async def _load(http: aiohttp.ClientSession, base: str, headers: dict[str, str],
                stop: asyncio.Event, accepted: list[str], statuses: list[int]) -> None:
    i = 0
    while not stop.is_set():
        body = {"embedding_model_id": f"alice/pg{i % 3}"}
        try:
            async with http.post(f"{base}/deploy", json=body, headers=headers) as resp:
                statuses.append(resp.status)
                payload = await resp.json()
                if resp.status == 202:
                    accepted.append(payload["task_id"])
                else:
                    assert payload["status_code"] == resp.status and payload["message"]
        except aiohttp.ClientError:
            statuses.append(-1)
        i += 1
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_postgres_restart_during_load(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, embedded_tmp: Path,
        clean: None, admin_headers: dict[str, str], pool: asyncpg.Pool) -> None:
    dsn, server = start_postgres(embedded_tmp / "pg")
    await apply_migrations(dsn)
    private = await create_pool(dsn, max_size=2)
    await private.execute("INSERT INTO users (id, username, is_admin) "
                          "SELECT id, username, is_admin FROM (VALUES ($1::bigint, 'admin', true),"
                          " (2, 'alice', false)) v(id, username, is_admin)",
                          (await pool.fetchval("SELECT id FROM users WHERE username='admin'")))
    for i in range(3):
        await private.execute(
            "INSERT INTO models (id, owner_id, name, source) VALUES (gen_random_uuid(), 2, $1,"
            " '{\"backend\": \"hashing\"}')", f"pg{i}")
    await private.close()
    port = free_port("127.0.0.1")
    spawn("service", api_port=port, database_url=dsn)
    spawn("worker", database_url=dsn)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(http, base + "/healthz")
    stop = asyncio.Event()
    accepted: list[str] = []
    statuses: list[int] = []
    loader = asyncio.create_task(_load(http, base, admin_headers, stop, accepted, statuses))
    await asyncio.sleep(2)
    before = len(statuses)
    server.cleanup()  # stops the cluster
    await asyncio.sleep(3)
    during = statuses[before:]
    dsn_again, server = start_postgres(embedded_tmp / "pg")
    assert dsn_again == dsn
    await asyncio.sleep(4)
    stop.set()
    await loader
    after = statuses[before + len(during):]
    print(f"\npostgres restart: before {before} requests, during {len(during)} "
          f"({sorted(set(during))}), after {len(after)} ({sorted(set(after))}); "
          f"{len(accepted)} tasks acknowledged")
    assert 503 in during and 500 not in statuses and -1 not in statuses
    assert 202 in after[-10:], "the API recovered without a restart"
    check = await create_pool(dsn, max_size=2)
    found = {str(r["id"]) for r in await check.fetch("SELECT id FROM tasks")}
    await check.close()
    assert set(accepted) <= found, "an acknowledged task was lost"
    server.cleanup()
