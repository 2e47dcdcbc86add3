"""Issue 4, must-show 3: the task guarantees under duplicates, outages and races."""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from db import deployments, events, models, replicas, tasks
from schemas.queue import JOB_RUN_TASK, QUEUE_NAME, decode_job, encode_job
from schemas.settings import Settings
from tests.conftest import Proc, wait_task
from tests.support import services
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port


async def _post(http: aiohttp.ClientSession, base: str, path: str,
                body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(base + path, json=body) as resp:
        assert resp.status == 202, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def _wait_status(pool: asyncpg.Pool, task_id: str, status: str,
                       timeout_s: float = 30) -> None:
    for _ in range(int(timeout_s * 20)):
        task = await tasks.get(pool, UUID(task_id))
        if task is not None and task.status == status:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"task {task_id} never reached {status}")


async def test_duplicate_delivery_runs_the_rollout_once(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        settings: Settings, hashing_model: Any) -> None:
    model_id = await hashing_model("dup", startup_delay_s=0.5)
    task = await _post(http, api, "/deploy", {"embedding_model_id": "alice/dup"})
    redis = ArqRedis(ConnectionPool.from_url(settings.require_redis_url()),
                     default_queue_name=QUEUE_NAME, job_serializer=encode_job,
                     job_deserializer=decode_job)
    for copy in range(3):  # the same task delivered three more times, under other job ids
        await redis.enqueue_job(JOB_RUN_TASK, f"{task['task_id']}:dup{copy}",
                                _job_id=f"{task['task_id']}:dup{copy}")
    await redis.aclose()
    spawn("worker")
    spawn("worker")
    done = await wait_task(http, api, "deploy", task["task_id"])
    assert done["status"] == "done", done
    row = await tasks.get(pool, UUID(task["task_id"]))
    assert row is not None and row.attempts == 1
    starts = [e for e in await events.list_for_task(pool, row.id) if "starting" in e.message]
    assert len(starts) == 1
    assert len(await replicas.list_for_model(pool, model_id, live_only=False)) == 1


async def test_deploy_accepted_while_redis_is_down_is_done_after_it_returns(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        tmp_path: Path, clean: None, hashing_model: Any) -> None:
    port = free_port("127.0.0.1")
    url, redis_proc = services.private_redis(tmp_path / "redis", port)
    api_port = free_port("127.0.0.1")
    spawn("service", api_port=api_port, redis_url=url)
    spawn("worker", redis_url=url)
    base = f"http://127.0.0.1:{api_port}"
    await wait_for_http(http, base + "/healthz")
    await hashing_model("outage")
    redis_proc.terminate()
    redis_proc.wait()
    try:
        task = await _post(http, base, "/deploy", {"embedding_model_id": "alice/outage"})
        row = await tasks.get(pool, UUID(task["task_id"]))
        assert row is not None and row.status == "pending" and row.enqueued_at is None
        await asyncio.sleep(1.0)
    finally:
        _, redis_proc = services.private_redis(tmp_path / "redis", port)
    try:
        done = await wait_task(http, base, "deploy", task["task_id"], timeout_s=60)
        assert done["status"] == "done", done
    finally:
        redis_proc.terminate()


async def test_two_deploys_of_one_model_never_process_at_once(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any) -> None:
    await hashing_model("serial", startup_delay_s=1.0)
    spawn("worker")
    spawn("worker")
    first = await _post(http, api, "/deploy", {"embedding_model_id": "alice/serial"})
    await _wait_status(pool, first["task_id"], "processing")
    second = await _post(http, api, "/deploy", {"embedding_model_id": "alice/serial"})
    a = await wait_task(http, api, "deploy", first["task_id"])
    b = await wait_task(http, api, "deploy", second["task_id"])
    assert (a["status"], b["status"]) == ("done", "done")
    row_a = await tasks.get(pool, UUID(first["task_id"]))
    row_b = await tasks.get(pool, UUID(second["task_id"]))
    assert row_a and row_b and row_a.finished_at and row_b.started_at
    assert row_b.started_at >= row_a.finished_at
    assert b["metadata"]["generation"] == 2


async def test_newer_deploy_cancels_the_older_pending_one(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any) -> None:
    await hashing_model("supersede", startup_delay_s=1.0)
    spawn("worker")
    first = await _post(http, api, "/deploy", {"embedding_model_id": "alice/supersede"})
    await _wait_status(pool, first["task_id"], "processing")
    middle = await _post(http, api, "/deploy", {"embedding_model_id": "alice/supersede"})
    last = await _post(http, api, "/deploy", {"embedding_model_id": "alice/supersede"})
    canceled = await wait_task(http, api, "deploy", middle["task_id"])
    assert canceled["status"] == "canceled"
    assert canceled["detail"] == f"superseded by {last['task_id']}"
    assert (await wait_task(http, api, "deploy", last["task_id"]))["status"] == "done"


async def _embed_replica(http: aiohttp.ClientSession, base: str, name: str) -> str:
    async with http.post(f"{base}/serve/{name}/embed", json={"inputs": "still here"}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Greenroom-Replica"]


async def _failing_redeploy(http: aiohttp.ClientSession, api: str, gateway: str,
                            pool: asyncpg.Pool, model_id: UUID, source: dict[str, Any],
                            config: dict[str, Any]) -> dict[str, Any]:
    serving = await _embed_replica(http, gateway, "fragile")
    await models.update_source(pool, model_id, source)
    task = await _post(http, api, "/deploy",
                       {"embedding_model_id": "alice/fragile", "config": config})
    failed = await wait_task(http, api, "deploy", task["task_id"])
    assert failed["status"] == "failed"
    assert await _embed_replica(http, gateway, "fragile") == serving
    deployment = await deployments.get(pool, model_id)
    assert deployment and deployment.status == "complete" and deployment.active_generation == 1
    live = await replicas.list_for_model(pool, model_id)
    assert {r.generation for r in live} == {1}
    return failed


async def test_failed_rollouts_leave_the_old_generation_serving(
        api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        pool: asyncpg.Pool,
        hashing_model: Any) -> None:
    model_id = await hashing_model("fragile")
    spawn("worker")
    first = await _post(http, api, "/deploy", {"embedding_model_id": "alice/fragile"})
    assert (await wait_task(http, api, "deploy", first["task_id"]))["status"] == "done"

    never_healthy = await _failing_redeploy(
        http, api, gateway, pool, model_id, {"backend": "hashing", "startup_delay_s": 600},
        {"deploy_timeout_s": 2})
    assert "did not become healthy before the deploy deadline" in never_healthy["detail"]

    crashing = await _failing_redeploy(
        http, api, gateway, pool, model_id,
        {"backend": "sentence-transformers", "location": "/nonexistent/model"}, {})
    assert "exited with code" in crashing["detail"]
    assert "/nonexistent/model" in crashing["detail"], "the log tail names the cause"
    errors = [e.message for e in await events.list_recent(pool, model_id) if e.level == "error"]
    assert len(errors) == 2
