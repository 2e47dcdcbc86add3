"""Must-show 1 of issue 15: the swarm runtime through the API, a gateway and a swarm
worker on a single-node swarm. Deploy, redeploy (generation 2 serves, generation 1's
service is gone), logs per task, delete (no service left); rollouts whose replica crashes
or is OOM-killed fail with the exit code and the log tail while the old generation serves.
"""

import asyncio
import re
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiodocker
import aiohttp
import asyncpg
import pytest

from db import deployments, events, installation, models, replicas
from tests.conftest import TEST_CLUSTER, wait_task
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.docker import HOG_MB, deploy, embed, skip_without_engine, wait_health
from tests.support.swarm import services_of
from worker.runtimes.base import (
    LABEL_CLUSTER,
    LABEL_GENERATION,
    LABEL_INSTALLATION,
    LABEL_MODEL,
)
from worker.runtimes.swarm import LABEL_RUNTIME

skip_without_engine()
pytestmark = pytest.mark.docker


async def _generations(docker_api: aiodocker.Docker, model_id: UUID) -> dict[int, int]:
    """{generation: replicas} of the model's services."""
    return {int(s["Spec"]["Labels"][LABEL_GENERATION]): s["Spec"]["Mode"]["Replicated"]["Replicas"]
            for s in await services_of(docker_api, model_id)}


async def _answering(http: aiohttp.ClientSession, gateway: str, name: str, n: int) -> set[str]:
    """Replica ids that answered `n` requests through the gateway (each must be a 200)."""
    seen = set()
    for _ in range(n):
        status, replica = await embed(http, gateway, name)
        assert status == 200
        seen.add(replica)
    return seen


async def _scale(http: aiohttp.ClientSession, api: str, model_id: UUID,
                 count: int) -> dict[str, Any]:
    async with http.post(f"{api}/api/v2/deploy/{model_id}/scale",
                         json={"replicas": count}) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    return await wait_task(http, api, "scale", task["task_id"])


async def test_deploy_redeploy_logs_delete_on_swarm(
        swarm_stack: str, gateway: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        docker_api: aiodocker.Docker, hashing_model: Any) -> None:
    api = swarm_stack
    model_id = await hashing_model("swarm-loop")

    first = await deploy(http, api, "alice/swarm-loop", {"replicas": 2, "memory": 256})
    assert first["status"] == "done", first
    assert await _generations(docker_api, model_id) == {1: 2}
    rows = {r.id: r for r in await replicas.list_for_model(pool, model_id)}
    assert {r.runtime for r in rows.values()} == {"swarm"}
    assert all(r.endpoint and r.endpoint.startswith("http://127.0.0.1:") for r in rows.values())
    assert await _answering(http, gateway, "swarm-loop", 4) <= {str(i) for i in rows}
    for row in rows.values():  # each task answers on its own node port
        assert await wait_health(str(row.endpoint), timeout_s=5) == 200

    async with http.get(f"{api}/api/v2/deploy/{model_id}/logs") as resp:
        assert resp.status == 200, await resp.text()
        entries = await resp.json()
    assert len(entries) == len(rows) == 2, "one entry per task"
    assert all("server_started" in e["stdout"] + e["stderr"] for e in entries), entries

    # Scaling is a service update of `replicas`: up to 3, then down to 1 (drained first).
    for count in (3, 1):
        scaled = await _scale(http, api, model_id, count)
        assert scaled["status"] == "done", scaled
        assert await _generations(docker_api, model_id) == {1: count}
        ready = [r for r in await replicas.list_for_model(pool, model_id) if r.state == "ready"]
        assert len(ready) == count
    assert await _answering(http, gateway, "swarm-loop", 2) == {str(ready[0].id)}

    second = await deploy(http, api, "alice/swarm-loop", {"replicas": 2, "memory": 256})
    assert second["status"] == "done", second
    assert await _generations(docker_api, model_id) == {2: 2}, "generation 1's service is gone"
    now = {r.id for r in await replicas.list_for_model(pool, model_id) if r.generation == 2}
    assert len(now) == 2
    assert await _answering(http, gateway, "swarm-loop", 4) <= {str(i) for i in now}

    async with http.post(f"{api}/delete", json={"model_id": "alice/swarm-loop"}) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    done = await wait_task(http, api, "delete", task["task_id"])
    assert done["status"] == "done", done
    assert await services_of(docker_api, model_id) == [], "no service left"


async def test_crash_and_oom_rollouts_fail_readably_on_swarm(
        swarm_stack: str, gateway: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        docker_api: aiodocker.Docker, hashing_model: Any, hog_image: str,
        tmp_path: Path) -> None:
    api = swarm_stack
    model_id = await hashing_model("swarm-fails")
    first = await deploy(http, api, "alice/swarm-fails", {"memory": 256})
    assert first["status"] == "done", first
    (serving,) = await _answering(http, gateway, "swarm-fails", 1)

    async def failing(source: dict[str, Any], config: dict[str, Any]) -> str:
        await models.update_source(pool, model_id, source)
        failed = await deploy(http, api, "alice/swarm-fails", config)
        assert failed["status"] == "failed", failed
        assert await _answering(http, gateway, "swarm-fails", 3) == {serving}, \
            "generation 1 stopped serving"
        deployment = await deployments.get(pool, model_id)
        assert deployment is not None and deployment.active_generation == 1
        assert await _generations(docker_api, model_id) == {1: 1}, "the failed service stays"
        detail: str = failed["detail"]
        return detail

    # sentence-transformers on an empty folder mounted at /model: the server exits.
    (tmp_path / "empty-model").mkdir()
    crashed = await failing({"backend": "sentence-transformers",
                             "location": str(tmp_path / "empty-model")}, {})
    assert re.search(r"exited with code [1-9]\d*", crashed), crashed
    assert "/model" in crashed, "the last log lines name the cause"

    oom = await failing({"backend": "hashing", "dimension": 384, "image": hog_image},
                        {"memory": 128})
    assert "OOM-killed" in oom and "memory limit" in oom, oom
    assert f"loading model weights: {HOG_MB} MB" in oom, "the last log lines are shown"


async def test_reconciler_replaces_a_crashed_task_and_removes_orphan_services(
        swarm_stack: str, gateway: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        docker_api: aiodocker.Docker, hashing_model: Any, model_image: str) -> None:
    api = swarm_stack
    model_id = await hashing_model("swarm-heal")
    first = await deploy(http, api, "alice/swarm-heal", {"memory": 256})
    assert first["status"] == "done", first
    (row,) = await replicas.list_for_model(pool, model_id)
    task = dict(await docker_api.tasks.inspect(str(row.runtime_ref)))
    # A service of this installation that no deployment owns (a worker died mid-rollout).
    stray = await docker_api.services.create(
        {"ContainerSpec": {"Image": model_image, "Env": {"MODEL_SERVER_BACKEND": "hashing"}}},
        name=f"greenroom-stray-{model_id}", labels={
            LABEL_CLUSTER: TEST_CLUSTER, LABEL_RUNTIME: "swarm", LABEL_MODEL: str(uuid4()),
            LABEL_GENERATION: "1", LABEL_INSTALLATION: str(await installation.get_id(pool))})

    await docker_api.containers.container(
        task["Status"]["ContainerStatus"]["ContainerID"]).kill()

    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        live = [r for r in await replicas.list_for_model(pool, model_id) if r.state == "ready"]
        if live and live[0].id != row.id:
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError("the crashed task was not replaced")
    (replacement,) = live
    again = dict(await docker_api.tasks.inspect(str(replacement.runtime_ref)))
    assert again["Slot"] == task["Slot"], "Swarm's restart of the slot, taken over"
    assert await _generations(docker_api, model_id) == {1: 1}
    messages = [e.message for e in await events.list_recent(pool, model_id)]
    assert any("exit code 137" in m and "replacement" in m for m in messages), messages
    assert await _answering(http, gateway, "swarm-heal", 2) == {str(replacement.id)}

    while asyncio.get_running_loop().time() < deadline:
        if stray["ID"] not in {s["ID"] for s in await services_of(docker_api)}:
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError("the orphan service was not removed")
