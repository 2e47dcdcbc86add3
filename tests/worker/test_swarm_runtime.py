"""The swarm runtime on a single-node swarm, driven directly (no API): one service per
generation shaped as asked, tasks as replicas (node address + host-mode port, task logs),
scaling as service updates, and a crashed task reported and taken over by its
replacement."""

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import aiodocker
import pytest

from tests.conftest import TEST_CLUSTER
from tests.support.docker import skip_without_engine, wait_health
from tests.support.swarm import services_of
from worker.runtimes.base import (
    LABEL_CLUSTER,
    LABEL_GENERATION,
    LABEL_MODEL,
    ReplicaSpec,
    RuntimeFailure,
)
from worker.runtimes.swarm import LABEL_SLOT_PREFIX, SwarmRuntime, service_name

skip_without_engine()
pytestmark = pytest.mark.docker

MB = 2**20


@pytest.fixture
def spec_of() -> Callable[..., ReplicaSpec]:
    model_id = uuid4()

    def make(generation: int = 1, **overrides: Any) -> ReplicaSpec:
        fields: dict[str, Any] = {
            "replica_id": uuid4(), "model_id": model_id, "model_identifier": "test/hash",
            "generation": generation, "task_id": uuid4(), "memory_mb": 256,
            "source": {"backend": "hashing", "dimension": 16}, **overrides}
        return ReplicaSpec(**fields)

    return make


async def _service(docker_api: aiodocker.Docker, spec: ReplicaSpec) -> dict[str, Any]:
    return dict(await docker_api.services.inspect(service_name(spec.model_id, spec.generation)))


async def test_service_per_generation_tasks_as_replicas_and_scaling(
        swarm_runtime: SwarmRuntime, docker_api: aiodocker.Docker,
        spec_of: Callable[..., ReplicaSpec]) -> None:
    first, second = spec_of(), spec_of()
    one = await swarm_runtime.start(first)
    two = await swarm_runtime.start(second)

    service = await _service(docker_api, first)
    spec = service["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2, "one service, replicas = 2"
    labels = spec["Labels"]
    assert labels[LABEL_MODEL] == str(first.model_id) and labels[LABEL_GENERATION] == "1"
    assert labels[LABEL_CLUSTER] == TEST_CLUSTER
    owners = {v.split("/")[0] for k, v in labels.items() if k.startswith(LABEL_SLOT_PREFIX)}
    assert owners == {str(first.replica_id), str(second.replica_id)}
    resources = spec["TaskTemplate"]["Resources"]
    assert resources["Limits"]["MemoryBytes"] == resources["Reservations"]["MemoryBytes"] \
        == 256 * MB
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "on-failure"
    # Issue 25 (M7): never root, a CPU limit, the installation's own overlay network.
    assert spec["TaskTemplate"]["ContainerSpec"]["User"] == "10001:10001"
    assert resources["Limits"]["NanoCPUs"] >= 10**9
    network = (await (await docker_api.networks.get(swarm_runtime.network())).show())
    assert network["Driver"] == "overlay" and network["Labels"][LABEL_CLUSTER] == TEST_CLUSTER
    assert [n["Target"] for n in spec["TaskTemplate"]["Networks"]] == [network["Id"]]
    assert spec["TaskTemplate"]["Placement"]["Preferences"] == [
        {"Spread": {"SpreadDescriptor": "node.id"}}]
    (port,) = spec["EndpointSpec"]["Ports"]
    assert port["PublishMode"] == "host" and not port.get("PublishedPort")

    # Each task on its own host port of its node (127.0.0.1: the swarm's advertise address).
    assert one.endpoint != two.endpoint
    assert all(r.endpoint.startswith("http://127.0.0.1:") for r in (one, two))
    assert list(await asyncio.gather(wait_health(one.endpoint), wait_health(two.endpoint))) \
        == [200, 200]
    listed = {i.runtime_ref: i for i in await swarm_runtime.list()
              if i.model_id == first.model_id}
    assert {listed[one.runtime_ref].replica_id, listed[two.runtime_ref].replica_id} == \
        {first.replica_id, second.replica_id}
    stdout, stderr = await swarm_runtime.logs(two.runtime_ref)
    assert "server_started" in stdout + stderr, "the task's own logs"

    # Scale down by one: that task stops, replicas 1, the other keeps answering.
    await swarm_runtime.remove_many([one.runtime_ref], grace_s=1)
    spec = (await _service(docker_api, first))["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
    info = await swarm_runtime.inspect(one.runtime_ref)
    assert info is None or not info.running
    assert await wait_health(two.endpoint, timeout_s=5) == 200

    # The last replica of a generation takes its service with it.
    await swarm_runtime.remove_many([two.runtime_ref], grace_s=1)
    assert await services_of(docker_api, first.model_id) == []


async def test_crashed_task_is_reported_and_its_restart_taken_over(
        swarm_runtime: SwarmRuntime, docker_api: aiodocker.Docker,
        spec_of: Callable[..., ReplicaSpec]) -> None:
    first = spec_of()
    started = await swarm_runtime.start(first)
    task = dict(await docker_api.tasks.inspect(started.runtime_ref))
    container = task["Status"]["ContainerStatus"]["ContainerID"]
    await docker_api.containers.container(container).kill()

    for _ in range(50):
        info = await swarm_runtime.inspect(started.runtime_ref)
        if info is not None and not info.running:
            break
        await asyncio.sleep(0.2)
    assert info is not None and not info.running and info.exit_code == 137, info
    assert "exit code 137" in info.describe_exit()

    # The repair: the crashed replica is removed (Swarm's restart of its slot stays), and
    # its replacement takes that restart over instead of adding a task.
    await swarm_runtime.remove_many([started.runtime_ref], grace_s=0)
    replacement = spec_of(replaces=started.runtime_ref)
    again = await swarm_runtime.start(replacement)
    assert again.runtime_ref != started.runtime_ref
    assert dict(await docker_api.tasks.inspect(again.runtime_ref))["Slot"] == task["Slot"]
    spec = (await _service(docker_api, first))["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
    assert spec["Labels"][f"{LABEL_SLOT_PREFIX}{task['Slot']}"].startswith(
        str(replacement.replica_id))
    assert await wait_health(again.endpoint) == 200


async def test_model_directory_missing_is_refused(
        swarm_runtime: SwarmRuntime, spec_of: Callable[..., ReplicaSpec]) -> None:
    spec = spec_of(source={"backend": "sentence-transformers", "location": "/no/such/model"})
    with pytest.raises(RuntimeFailure, match="model directory /no/such/model is not on this"):
        await swarm_runtime.start(spec)
