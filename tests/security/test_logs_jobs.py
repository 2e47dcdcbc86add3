"""M9: the logs routes cannot flood the shared queue, and only a model's owner reads them.

Before: every logs call queued an arq job of its own (tail up to 10,000), at READ
permission. Now identical calls (one model, one tail) share one job and its kept result,
the routes need OWNER (a model's output may carry its secrets), and each user has an
allowance of calls per window past which the API answers 429 with the JSON error body.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest
from arq import func
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker
from redis.asyncio import ConnectionPool

from schemas.queue import JOB_REPLICA_LOGS, LOGS_RESULT_KEEP_S, QUEUE_NAME, decode_job, encode_job
from service.domain import bazaar
from tests.conftest import Proc
from tests.integration.accounts import call, eventually, make_user

LOGS_ROUTES = ("/api/v2/deploy/alice/logged/logs",
               "/api/v1/deploy/logs?model_identifier=alice/logged",
               "/api/v2/deployments/alice/logged/replica-logs")


@pytest.fixture
async def arq_redis(backing: dict[str, str], clean: None) -> AsyncIterator[ArqRedis]:
    """A queue client made as the API makes its own (service/app.py)."""
    redis = ArqRedis(ConnectionPool.from_url(backing["redis"]), default_queue_name=QUEUE_NAME,
                     job_serializer=encode_job, job_deserializer=decode_job)
    yield redis
    await redis.aclose()


async def test_concurrent_identical_logs_calls_share_one_arq_job(
        arq_redis: ArqRedis, backing: dict[str, str]) -> None:
    """Twenty callers asking for one model's last 100 lines, and one for its last 50: two
    jobs reach the worker (a real arq worker; its job is a counting stand-in for the
    runtime's logs)."""
    ran: list[tuple[str, int]] = []

    async def counting_logs(ctx: dict[str, Any], model_id: str, tail: int) -> list[Any]:
        ran.append((model_id, tail))
        await asyncio.sleep(0.3)  # still running while the other callers arrive
        return [{"replica_id": "r", "generation": 1, "stdout": f"tail {tail}", "stderr": ""}]

    worker = Worker(functions=[func(counting_logs, name=JOB_REPLICA_LOGS,
                                    keep_result=LOGS_RESULT_KEEP_S)],
                    queue_name=QUEUE_NAME, redis_settings=RedisSettings.from_dsn(backing["redis"]),
                    job_serializer=encode_job, job_deserializer=decode_job, poll_delay=0.05,
                    handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    try:
        model = uuid4()
        answers = await asyncio.gather(
            *[bazaar.replica_logs(arq_redis, model, 100, f"user-{i}") for i in range(20)],
            bazaar.replica_logs(arq_redis, model, 50, "user-0"))
        # A call after the answer reads the kept result: no third job.
        answers.append(await bazaar.replica_logs(arq_redis, model, 100, "user-1"))
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await worker.close()
    assert sorted(ran) == [(str(model), 50), (str(model), 100)]
    assert [a[0]["stdout"] for a in answers] == ["tail 100"] * 20 + ["tail 50", "tail 100"]


async def _worker_answering(spawn: Callable[..., Proc], http: aiohttp.ClientSession, api: str,
                            headers: dict[str, str]) -> None:
    """Start the real worker and wait until it answers a logs call (as `headers`' user)."""
    spawn("worker")

    async def answered() -> bool:
        status, _ = await call(http, "GET", api + LOGS_ROUTES[0], headers=headers)
        return status == 200
    await eventually(answered, 90, "the worker answers logs")


async def test_logs_routes_answer_the_owner_and_refuse_a_reader(
        api: str, spawn: Callable[..., Proc], pool: asyncpg.Pool,
        http: aiohttp.ClientSession, hashing_model: Any) -> None:
    await hashing_model("logged")  # alice's, public: every user may read it
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    await _worker_answering(spawn, http, api, alice)
    for path in LOGS_ROUTES:
        status, body = await call(http, "GET", api + path, headers=bob)
        assert status == 403, (path, body)
        assert body["status_code"] == 403 and "owner" in body["message"], body
        status, body = await call(http, "GET", api + path, headers=alice)
        assert status == 200, (path, body)
    _, status_body = await call(http, "GET", api + "/api/v2/deploy/alice/logged/status",
                                headers=bob)
    assert "status" in status_body, "reading the model's status stays at READ"


async def test_logs_calls_past_a_users_allowance_answer_429_with_the_json_error_body(
        api: str, spawn: Callable[..., Proc], pool: asyncpg.Pool,
        http: aiohttp.ClientSession, hashing_model: Any,
        admin_headers: dict[str, str]) -> None:
    await hashing_model("logged")
    _, alice = await make_user(pool, "alice")
    await _worker_answering(spawn, http, api, admin_headers)  # admin's own allowance
    for n in range(bazaar.LOGS_PER_CALLER):
        status, body = await call(http, "GET", api + LOGS_ROUTES[n % 3], headers=alice)
        assert status == 200, (n, body)
    async with http.get(api + LOGS_ROUTES[0], headers=alice) as resp:
        assert resp.status == 429
        body = await resp.json()
        retry = int(resp.headers["Retry-After"])
    assert body["status_code"] == 429 and "too many logs requests" in body["message"], body
    assert body["detail"]["limit"] == bazaar.LOGS_PER_CALLER
    assert 1 <= retry <= bazaar.LOGS_WINDOW_S
    status, _ = await call(http, "GET", api + LOGS_ROUTES[0], headers=admin_headers)
    assert status == 200, "another user's allowance is their own"
