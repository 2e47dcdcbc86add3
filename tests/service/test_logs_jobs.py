"""M9: the logs routes cannot flood the shared queue, and a reader never sees a secret.

Before: every logs call queued an arq job of its own (tail up to 10,000), and what a
replica printed reached every reader of the model as it was. Now identical calls (one
model, one tail) share one job and its kept result; the routes stay at READ, as seeds 000
and 001 say, and the worker takes the deployment's secret values, its longer env values
and any token out of the lines (worker/log_redaction.py); each user has an allowance of
calls per window past which the API answers 429 with the JSON error body.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest
from arq import func
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker
from redis.asyncio import ConnectionPool

from schemas import replica_auth
from schemas.models import ModelSource
from schemas.queue import JOB_REPLICA_LOGS, LOGS_RESULT_KEEP_S, QUEUE_NAME, decode_job, encode_job
from schemas.settings import Settings
from schemas.tokens import issue_job_token
from service.domain import bazaar
from service.domain.registration import register
from tests.conftest import Proc
from tests.support.accounts import call, eventually, make_user
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

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


async def _done(http: aiohttp.ClientSession, api: str, task_id: str,
                headers: dict[str, str]) -> None:
    async def finished() -> bool:
        _, task = await call(http, "GET", f"{api}/deploy/{task_id}", headers=headers)
        assert task["status"] not in ("failed", "refused", "canceled"), task
        return bool(task["status"] == "done")
    await eventually(finished, 90, f"deploy {task_id} done")


GENAI_SECRET = "genai-key-printed-by-the-model-5521"
ENV_SECRET = "env-token-printed-by-the-model-9034"
SHORT_ENV = "32"  # a setting, not a secret: shorter than MIN_ENV_VALUE_CHARS, kept


async def test_a_reader_reads_the_logs_with_the_deployments_secrets_taken_out(
        api: str, spawn: Callable[..., Proc], pool: asyncpg.Pool, settings: Settings,
        http: aiohttp.ClientSession) -> None:
    """alice deploys a private model with a genai_key and an env value, and grants bob READ;
    her model prints both, its job token and its generation's gateway secret (the
    genai_key is kept from her first deploy into the second, which sets the env). bob
    reads the logs (200, as the seeds say) on all three routes: every secret is
    `[redacted]`, the rest of the line is there."""
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    await register(pool, "alice", "logged", ModelSource(backend="hashing", dimension=16),
                   "private")
    status, _ = await call(http, "PUT", api + "/api/v2/models/alice/logged/permissions",
                           json={"username": "bob", "permission": "read"}, headers=alice)
    assert status == 200
    spawn("worker")
    status, body = await call(http, "POST", api + "/api/v1/deploy/run", headers=alice,
                              json={"model_identifier": "alice/logged",
                                    "genai_key": GENAI_SECRET})
    assert status == 202, body
    _, first = await call(http, "GET", api + "/deploy-status/alice/logged", headers=alice)
    await _done(http, api, first["task_id"], alice)
    status, body = await call(http, "POST", api + "/deploy", headers=alice, json={
        "embedding_model_id": "alice/logged",
        "config": {"env": {"API_TOKEN": ENV_SECRET, "BATCH": SHORT_ENV}}})
    assert status == 202, body
    await _done(http, api, body["task_id"], alice)
    assert settings.secret_key is not None
    key = settings.secret_key.get_secret_value()
    token = issue_job_token(key, uuid4(), 1)
    model_id = await pool.fetchval("SELECT id FROM models WHERE name = 'logged'")
    gateway_secret = replica_auth.generation_secret(key, model_id, 2)  # the serving one's
    printed = (f"model says key={GENAI_SECRET} env={ENV_SECRET} token={token} "
               f"gw={gateway_secret} batch={SHORT_ENV}")
    for log in (settings.state_dir / "replicas").glob("*/stdout.log"):
        with log.open("a") as out:  # what the model's own code printed
            out.write(printed + "\n")

    async def redacted_everywhere() -> bool:
        for path in LOGS_ROUTES:
            status, body = await call(http, "GET", api + path, headers=bob)
            assert status == 200, (path, body)
            text = json.dumps(body)
            for secret in (GENAI_SECRET, ENV_SECRET, token, gateway_secret):
                assert secret not in text, path
            if ("model says key=[redacted] env=[redacted] token=[redacted] gw=[redacted] "
                    "batch=32") not in text:
                return False
        return True
    await eventually(redacted_everywhere, 30, "bob reads the printed line, redacted")


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


async def test_a_generation_still_starting_has_its_tasks_env_taken_out_of_its_logs(
        api: str, spawn: Callable[..., Proc], pool: asyncpg.Pool, settings: Settings,
        http: aiohttp.ClientSession) -> None:
    """A first deploy's replica runs with its task's env before the deployment's config has
    any (it is written at the switch): a reader of the logs meanwhile sees it redacted."""
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    await register(pool, "alice", "slow", ModelSource(backend="hashing", dimension=16,
                                                       startup_delay_s=60), "public")
    spawn("worker")
    status, body = await call(http, "POST", api + "/deploy", headers=alice, json={
        "embedding_model_id": "alice/slow", "config": {"env": {"API_TOKEN": ENV_SECRET}}})
    assert status == 202, body
    logs: list[Path] = []

    async def starting() -> bool:
        logs[:] = list((settings.state_dir / "replicas").glob("*/stdout.log"))
        return bool(logs)
    await eventually(starting, 60, "the replica is starting")
    with logs[0].open("a") as out:
        out.write(f"starting with token={ENV_SECRET}\n")

    async def redacted() -> bool:
        status, body = await call(http, "GET", api + "/api/v2/deploy/alice/slow/logs",
                                  headers=bob)
        assert status == 200, body
        assert ENV_SECRET not in json.dumps(body)
        return "starting with token=[redacted]" in json.dumps(body)
    await eventually(redacted, 30, "bob reads the starting replica's line, redacted")
