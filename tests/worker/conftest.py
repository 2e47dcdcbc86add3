"""Fixtures of the worker's decision tests: the in-memory FakeRuntime and a worker context
on it (real Postgres and Redis; no replica process)."""

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from schemas.settings import Settings
from tests.worker.fake_runtime import FakeRuntime
from worker.context import WorkerContext


@pytest.fixture
async def fake_runtime() -> AsyncIterator[FakeRuntime]:
    runtime = FakeRuntime()
    await runtime.open()
    yield runtime
    await runtime.close()


@pytest.fixture
async def fake_ctx(fake_runtime: FakeRuntime, settings: Settings, pool: asyncpg.Pool,
                   clean: None) -> AsyncIterator[WorkerContext]:
    """A worker's context on the FakeRuntime, in a clean database: its short waits (a 2 s
    deploy deadline, drains that need no gateway's word for long) keep each test fast."""
    fast = settings.model_copy(update={"deploy_timeout_s": 2, "routes_poll_s": 0.05,
                                       "drain_timeout_s": 1, "stop_grace_s": 0,
                                       "capacity_memory_mb": 1_000_000})
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(fast.require_redis_url()))
    async with aiohttp.ClientSession() as http:
        yield WorkerContext(settings=fast, pool=pool, redis=redis, runtime=fake_runtime,
                            http=http, worker_id="fake-worker")
    await redis.aclose()
