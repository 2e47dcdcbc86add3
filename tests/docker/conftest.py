"""Fixtures for tests against a real Docker Engine: the engine, the test image, a runtime.

Without an engine each docker test module skips with one line (`skip_without_engine()`
at its top), except under CI (`CI` set), where the `docker_image` fixture fails instead:
start an engine with `.ci/docker-engine.sh`.
"""

import asyncio
import contextlib
import functools
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID, uuid4

import aiodocker
import aiohttp
import pytest

from schemas.settings import Settings
from worker import image
from worker.runtimes.base import ReplicaSpec
from worker.runtimes.docker import DockerRuntime

NO_ENGINE = "no Docker Engine answers `docker info` (start one: .ci/docker-engine.sh)"


@functools.cache
def engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def skip_without_engine() -> None:
    """Call at the top of a docker test module: one skip line for it when no engine answers."""
    if not os.environ.get("CI") and not engine_answers():
        pytest.skip(NO_ENGINE, allow_module_level=True)


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The hashing-only model-server image, built once per session (skipped if unchanged)."""
    if not engine_answers():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {NO_ENGINE}", pytrace=False)
        pytest.skip(NO_ENGINE)
    image.build(image.TEST_TAG, with_model=False)
    return image.TEST_TAG


@pytest.fixture
async def runtime(docker_image: str) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(Settings(runtime="docker", docker_image=docker_image))
    yield rt
    await rt.close()


@pytest.fixture
async def docker_api() -> AsyncIterator[aiodocker.Docker]:
    """A raw Engine client, to check what the runtime asked for."""
    client = aiodocker.Docker()
    yield client
    await client.close()


@pytest.fixture
async def make_spec(runtime: DockerRuntime) -> AsyncIterator[Callable[..., ReplicaSpec]]:
    """Factory of hashing-backend specs; every container of their models is removed after."""
    models: set[UUID] = set()

    def _make(model_id: UUID | None = None, generation: int = 1, **overrides: Any) -> ReplicaSpec:
        spec_model = model_id or uuid4()
        models.add(spec_model)
        fields: dict[str, Any] = {
            "replica_id": uuid4(), "model_id": spec_model, "model_identifier": "test/hash",
            "generation": generation, "task_id": uuid4(),
            "source": {"backend": "hashing", "dimension": 16}, **overrides,
        }
        return ReplicaSpec(**fields)

    yield _make
    for info in await runtime.list():
        if info.model_id in models:
            with contextlib.suppress(Exception):
                await runtime.remove(info.runtime_ref)


async def wait_health(endpoint: str, timeout_s: float = 30) -> int:
    """Poll GET /health from the host until 200; returns the last status seen."""
    status = 0
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{endpoint}/health") as resp:
                    status = resp.status
                    if status == 200:
                        return status
            await asyncio.sleep(0.2)
    return status


async def wait_exit(runtime: DockerRuntime, ref: str, timeout_s: float = 30) -> Any:
    """Poll inspect until the replica is no longer running; returns its ReplicaInfo."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = await runtime.inspect(ref)
        if info is None or not info.running:
            return info
        await asyncio.sleep(0.2)
    raise TimeoutError(f"container {ref[:12]} still running after {timeout_s}s")

