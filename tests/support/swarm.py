"""Fixtures for the swarm runtime's tests: a single-node swarm on the test engine, a
runtime on it, and the API, a gateway and one worker on the swarm runtime (a plugin of
tests/conftest.py beside tests/support/docker.py, whose fixtures these build on).

The engine is made a single-node swarm advertised on 127.0.0.1 when it is in none
(`.ci/docker-engine.sh` does the same); plain containers keep working on it.
"""

import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiodocker
import pytest

from schemas.settings import Settings
from tests.conftest import TEST_CLUSTER
from worker.runtimes.base import LABEL_CLUSTER, LABEL_MODEL
from worker.runtimes.swarm import SwarmRuntime


@pytest.fixture(scope="session")
def swarm(docker_image: str) -> str:
    """This engine's swarm state, made `active` (single node, 127.0.0.1) if it was not."""
    def state() -> str:
        return subprocess.run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
                              capture_output=True, text=True, check=True).stdout.strip()

    if state() == "inactive":
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
                       capture_output=True, check=True)
    current = state()
    if current != "active":
        pytest.fail(f"the engine's swarm is {current!r}, not active", pytrace=False)
    return current


async def services_of(docker_api: aiodocker.Docker, model_id: Any = None) -> list[Any]:
    """This session's swarm services (of one model, if given)."""
    labels = [f"{LABEL_CLUSTER}={TEST_CLUSTER}"]
    if model_id is not None:
        labels.append(f"{LABEL_MODEL}={model_id}")
    return list(await docker_api.services.list(filters={"label": labels}))


async def remove_test_services(docker_api: aiodocker.Docker) -> None:
    for service in await services_of(docker_api):
        with contextlib.suppress(aiodocker.DockerError):
            await docker_api.services.delete(service["ID"])


@pytest.fixture
async def swarm_runtime(swarm: str, docker_image: str,
                        docker_api: aiodocker.Docker) -> AsyncIterator[SwarmRuntime]:
    """A swarm runtime of this session's cluster; its services are removed afterwards."""
    rt = SwarmRuntime(Settings(runtime="swarm", docker_image=docker_image,
                               cluster=TEST_CLUSTER, stop_grace_s=2))
    yield rt
    await rt.close()
    await remove_test_services(docker_api)


@pytest.fixture
async def swarm_stack(api: str, gateway: str, spawn: Callable[..., Any], swarm: str,
                      model_image: str, docker_api: aiodocker.Docker) -> AsyncIterator[str]:
    """The API, a gateway (the `gateway` fixture) and one worker on the swarm runtime with
    the model image; returns the API's base URL. Afterwards the worker is stopped first,
    then this session's services are removed."""
    worker = spawn("worker", runtime="swarm", docker_image=model_image)
    yield api
    worker.stop()
    await remove_test_services(docker_api)
