"""Issue 5: green rollouts on a real Docker Engine through the API and a docker worker.

Deploy, redeploy and delete leave exactly the containers they should; redeploys under a
steady load through a gateway process drop no request (the Python gateway, and HAProxy
programmed by Greenroom where haproxy is installed), also through a gateway the workers
cannot hear from (it finds the switch by polling Postgres, and the drain waits for that).
"""

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiodocker
import aiohttp
import asyncpg
import pytest

from db import deployments, replicas
from tests.conftest import Proc, start_gateway, wait_task
from tests.gateway.test_gateways import ENGINES, start_engine
from tests.support import services
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.docker import containers_of, deploy, embed, skip_without_engine
from tests.support.load import run_load
from worker.runtimes.base import LABEL_GENERATION, LABEL_MODEL, LABEL_REPLICA, LABEL_TASK

skip_without_engine()
pytestmark = pytest.mark.docker

MB = 2**20


def _check_container(data: dict[str, Any], model_id: UUID, generation: int, task_id: str,
                     memory_mb: int) -> None:
    labels = data["Config"]["Labels"]
    assert labels[LABEL_MODEL] == str(model_id)
    assert labels[LABEL_GENERATION] == str(generation)
    assert labels[LABEL_TASK] == task_id
    assert data["State"]["Running"], data["State"]
    host = data["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == memory_mb * MB
    (binding,) = data["NetworkSettings"]["Ports"]["8080/tcp"]
    assert binding["HostIp"] == "127.0.0.1"


async def _gone(docker_api: aiodocker.Docker, container_id: str) -> bool:
    try:
        await docker_api.containers.container(container_id).show()
    except aiodocker.DockerError as exc:
        return exc.status == 404
    return False


async def test_deploy_redeploy_delete_on_docker(
        docker_stack: str, gateway: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        docker_api: aiodocker.Docker, hashing_model: Any) -> None:
    api = docker_stack
    model_id = await hashing_model("docker-loop")

    first = await deploy(http, api, "alice/docker-loop", {"memory": 256})
    assert first["status"] == "done", first
    (c1,) = await containers_of(docker_api, model_id)
    _check_container(c1, model_id, 1, first["task_id"], 256)
    (r1,) = await replicas.list_for_model(pool, model_id)
    assert (r1.runtime, r1.runtime_ref, r1.state) == ("docker", c1["Id"], "ready")
    assert c1["Config"]["Labels"][LABEL_REPLICA] == str(r1.id)
    assert await embed(http, gateway, "docker-loop") == (200, str(r1.id))

    second = await deploy(http, api, str(model_id), {"memory": 384, "replicas": 2})
    assert second["status"] == "done", second
    assert second["metadata"]["generation"] == 2
    gen2 = await containers_of(docker_api, model_id)
    assert len(gen2) == 2
    for data in gen2:
        _check_container(data, model_id, 2, second["task_id"], 384)
    assert await _gone(docker_api, c1["Id"]), "generation 1's container was not removed"
    gen2_ids = {d["Config"]["Labels"][LABEL_REPLICA] for d in gen2}
    served = {await embed(http, gateway, "docker-loop") for _ in range(6)}
    assert {status for status, _ in served} == {200}
    assert {replica for _, replica in served} <= gen2_ids

    async with http.post(f"{api}/delete", json={"model_id": "alice/docker-loop"}) as resp:
        assert resp.status == 202, await resp.text()
        deletion = await resp.json()
    done = await wait_task(http, api, "delete", deletion["task_id"])
    assert done["status"] == "done", done
    assert await containers_of(docker_api, model_id) == []
    assert (await embed(http, gateway, "docker-loop"))[0] in (404, 503)
    assert await replicas.list_for_model(pool, model_id) == []


# ---------------------------------------------------------------- zero downtime under load

RATE = 60  # requests per second, paced (open loop) so a stall shows up as late requests
DURATION_S = 22
CONCURRENCY = 32


@pytest.mark.serial  # paced load: asserts the rate it reached and that no request timed out
@pytest.mark.parametrize("engine", ENGINES)
async def test_redeploys_under_load_drop_no_request(
        docker_stack: str, gateway: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        docker_api: aiodocker.Docker, hashing_model: Any, spawn: Callable[..., Proc],
        engine: str) -> None:
    """On each engine: the Python gateway, and HAProxy serving the containers directly."""
    api = docker_stack
    if engine == "haproxy":
        gateway = await start_engine(spawn, http, engine)
    model_id = await hashing_model("under-load")
    assert (await deploy(http, api, "alice/under-load"))["status"] == "done"

    load_task = asyncio.create_task(
        run_load(f"{gateway}/serve/under-load/embed", RATE, DURATION_S, CONCURRENCY))
    rollouts = []
    for pause in (3.0, 2.0):  # generation 1, then 2, then 3 serve the load
        await asyncio.sleep(pause)
        rollouts.append(await deploy(http, api, "alice/under-load"))
    assert not load_task.done(), "the load ended before the rollouts did: lengthen DURATION_S"
    load = await load_task

    assert [r["status"] for r in rollouts] == ["done", "done"], rollouts
    assert load.failures == [], f"{len(load.failures)} of {load.sent} failed: {load.failures[:5]}"
    assert load.sent == RATE * DURATION_S and load.elapsed_s >= 20
    assert load.sent / load.elapsed_s >= 50
    rows = await replicas.get_many(pool, [UUID(r) for r in load.replicas])
    served = Counter[int]()
    for row in rows:
        served[row.generation] += load.replicas[str(row.id)]
    assert set(served) == {1, 2, 3}, served
    deployment = await deployments.get(pool, model_id)
    assert deployment is not None and deployment.active_generation == 3
    live = await containers_of(docker_api, model_id)
    assert [d["Config"]["Labels"][LABEL_GENERATION] for d in live] == ["3"]
    latencies = sorted(load.latencies)
    print(f"\n{engine} gateway, load: {load.sent} requests in {load.elapsed_s:.1f}s, 0 failed, "
          f"by generation "
          f"{dict(sorted(served.items()))}, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms")


@pytest.mark.serial  # paced load: no request may time out
async def test_gateway_that_cannot_report_drops_nothing(
        docker_stack: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        hashing_model: Any, tmp_path: Path) -> None:
    """A second gateway whose Redis is not the workers': they see no report from it and
    publish nothing to it, so it finds each switch only by polling Postgres."""
    api = docker_stack
    isolated, redis_proc = services.private_redis(tmp_path / "isolated-redis")
    try:
        unreported = await start_gateway(spawn, http, redis_url=isolated)
        await hashing_model("unreported")
        assert (await deploy(http, api, "alice/unreported"))["status"] == "done"
        for _ in range(50):  # until its poll finds generation 1
            if (await embed(http, unreported, "unreported"))[0] == 200:
                break
            await asyncio.sleep(0.1)
        load_task = asyncio.create_task(
            run_load(f"{unreported}/serve/unreported/embed", RATE, 8, CONCURRENCY))
        await asyncio.sleep(1)
        assert (await deploy(http, api, "alice/unreported"))["status"] == "done"
        load = await load_task
    finally:
        redis_proc.terminate()
    assert load.failures == [], f"{len(load.failures)} of {load.sent} failed: {load.failures}"
    assert len(load.replicas) == 2, "both generations should have answered"
