"""Issue 27, must-show 2 on the Docker runtime, on both gateway engines (the Python
gateway's draw, and HAProxy's server weights): under 40 requests a second a good
candidate walks every step with no failed request, and one answering 10 % errors (the
test knob test_error_rate, passed to its container) is stopped at its first step, its
container removed, the serving generation holding all traffic after."""

from collections.abc import Callable
from typing import Any

import aiodocker
import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from db import traffic
from schemas.settings import Settings
from tests.conftest import Proc
from tests.gateway.test_gateways import ENGINES, start_engine
from tests.gateway.test_haproxy_canary import watching
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.autoscale import deploy, ready_count
from tests.support.docker import containers_of, skip_without_engine
from tests.worker.test_canary_rollout import CANARY, GOOD, SERVICE_MS, _candidate, _under_load

skip_without_engine()
pytestmark = [pytest.mark.docker, pytest.mark.serial, pytest.mark.timeout(240)]


async def _serving(http: aiohttp.ClientSession, api: str, hashing_model: Any,
                   name: str) -> Any:
    model_id = await hashing_model(name, test_service_time_ms=SERVICE_MS)
    first = await deploy(http, api, f"alice/{name}", {})
    assert first["status"] == "done", first
    return model_id


@pytest.mark.parametrize("engine", ENGINES)
async def test_docker_good_candidate_walks_every_step(
        docker_stack: str, gateway: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        docker_api: aiodocker.Docker, hashing_model: Any, spawn: Callable[..., Proc],
        settings: Settings, engine: str) -> None:
    if engine == "haproxy":
        gateway = await start_engine(spawn, http, engine)
    model_id = await _serving(http, docker_stack, hashing_model, "dgood")
    redis = Redis.from_url(settings.redis_url or "")
    async with watching(None, redis, model_id) as seen:
        task, during, after = await _under_load(http, docker_stack, gateway, "dgood",
                                                {"rollout": GOOD})
    await redis.aclose()
    if engine == "haproxy":  # HAProxy split and counted the candidate's requests itself
        assert seen.haproxy.get("2", (0, 0))[0] >= 20 and "2" not in seen.python, seen
    assert task["status"] == "done", (task["detail"], task["metadata"].get("rollout"))
    assert [s["verdict"] for s in task["metadata"]["rollout"]["steps"]] == ["pass"] * 3
    assert during.failures == [] and after.failures == [], during.failures[:5]
    assert await ready_count(pool, model_id) == {2: 1}
    assert len(await containers_of(docker_api, model_id, generation=1)) == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_docker_ten_percent_errors_stopped_at_the_first_step(
        docker_stack: str, gateway: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        docker_api: aiodocker.Docker, hashing_model: Any, spawn: Callable[..., Proc],
        settings: Settings, engine: str) -> None:
    if engine == "haproxy":
        gateway = await start_engine(spawn, http, engine)
    model_id = await _serving(http, docker_stack, hashing_model, "dflaky")
    await _candidate(pool, model_id, test_error_rate=0.1)
    redis = Redis.from_url(settings.redis_url or "")
    async with watching(None, redis, model_id) as seen:
        task, during, after = await _under_load(http, docker_stack, gateway, "dflaky",
                                                {"rollout": CANARY})
    await redis.aclose()
    if engine == "haproxy":  # the judge stopped it on HAProxy's counts
        assert seen.haproxy.get("2", (0, 0))[1] > 0 and "2" not in seen.python, seen
    assert task["status"] == "failed", task
    steps = task["metadata"]["rollout"]["steps"]
    assert [(s["weight"], s["verdict"]) for s in steps] == [(20, "fail")], steps
    assert 0 < len(during.failures) <= steps[0]["candidate"]["errors"] + 3
    assert after.failures == []
    assert await ready_count(pool, model_id) == {1: 1}
    assert await containers_of(docker_api, model_id, generation=2) == []
    assert await traffic.get_split(pool, model_id) is None
