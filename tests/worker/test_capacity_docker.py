"""Issue 19, must-show 2 on a real Docker Engine: the budget defaults to the engine's
memory, running containers use it up, and a rollout that does not fit fails fast with
the old generation serving and no container of the new one left."""

import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiodocker
import aiohttp
import asyncpg
import pytest

from db import deployments, replicas
from schemas.settings import Settings
from tests.conftest import TEST_CLUSTER
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.docker import (
    containers_of,
    deploy,
    embed,
    remove_test_containers,
    skip_without_engine,
)
from worker.admission import capacity
from worker.context import WorkerContext
from worker.runtimes.docker import DockerRuntime

skip_without_engine()
pytestmark = pytest.mark.docker
BUDGET_MB = 1000


@pytest.fixture
async def cleanup(pool: asyncpg.Pool, docker_api: aiodocker.Docker) -> AsyncIterator[None]:
    yield
    await remove_test_containers(pool, docker_api)


def _engine_memory() -> str:
    """`docker info`'s MemTotal, read by the CLI rather than the runtime's own client."""
    return subprocess.run(["docker", "info", "--format", "{{.MemTotal}}"], check=True,
                          capture_output=True, text=True).stdout.strip()


async def test_the_default_budget_is_the_engines_memory_less_running_replicas(
        runtime: DockerRuntime, make_spec: Callable[..., Any], pool: asyncpg.Pool,
        settings: Settings, clean: None, hashing_model: Any) -> None:
    engine = _engine_memory()
    async with aiohttp.ClientSession() as http:
        ctx = WorkerContext(settings=settings.model_copy(update={"runtime": "docker",
                                                                 "cluster": TEST_CLUSTER}),
                            pool=pool, redis=None,  # type: ignore[arg-type]
                            runtime=runtime, http=http, worker_id="t")
        assert await capacity.budget_mb(ctx) == int(engine) // 2**20
        before = await capacity.used_mb(ctx)
        spec = make_spec(model_id=await hashing_model("counted"), memory_mb=256)
        await replicas.insert(pool, replica_id=spec.replica_id, model_id=spec.model_id,
                              generation=1, task_id=None, runtime="docker", memory_mb=256)
        await runtime.start(spec)
        assert await capacity.used_mb(ctx) == before + 256


async def test_a_rollout_past_the_budget_fails_fast_on_docker(
        api: str, gateway: str, spawn: Callable[..., Any], docker_image: str,
        http: aiohttp.ClientSession,
        pool: asyncpg.Pool, docker_api: aiodocker.Docker, hashing_model: Any,
        cleanup: None) -> None:
    spawn("worker", runtime="docker", docker_image=docker_image,
          capacity_memory_mb=BUDGET_MB)
    model_id = await hashing_model("roomy")
    first = await deploy(http, api, "alice/roomy", {"memory": 512})
    assert first["status"] == "done", first
    status, replica = await embed(http, gateway, "roomy")
    assert status == 200

    failed = await deploy(http, api, "alice/roomy", {"memory": 512})
    assert failed["status"] == "failed", failed
    assert failed["detail"] == ("not enough capacity on this worker: needs 512 MB, "
                                "488 MB left of 1,000 MB budget"), failed
    assert await embed(http, gateway, "roomy") == (200, replica), "generation 1 serves"
    assert await containers_of(docker_api, model_id, generation=failed["metadata"]
                               ["generation"]) == []
    deployment = await deployments.get(pool, model_id)
    assert deployment is not None and deployment.active_generation == 1

    # A smaller generation fits beside the old one.
    done = await deploy(http, api, "alice/roomy", {"memory": 256})
    assert done["status"] == "done", done
