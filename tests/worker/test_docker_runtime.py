"""DockerRuntime against a real Engine, with the hashing-only model-server image."""

from collections.abc import Callable
from pathlib import Path

import aiodocker
import pytest

from schemas.settings import Settings
from tests.conftest import TEST_CLUSTER
from tests.support.docker import skip_without_engine, wait_exit, wait_health
from worker.runtimes.base import LABEL_REPLICA, ReplicaSpec, RuntimeFailure
from worker.runtimes.docker import DockerRuntime, container_name

skip_without_engine()
pytestmark = pytest.mark.docker


async def test_replica_starts_with_labels_limit_and_loopback_port(
    runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec], docker_api: aiodocker.Docker
) -> None:
    spec = make_spec(memory_mb=256)
    started = await runtime.start(spec)

    data = await docker_api.containers.container(started.runtime_ref).show()
    assert data["Name"] == "/" + container_name(spec)
    assert spec.labels().items() <= data["Config"]["Labels"].items()
    host = data["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 256 * 2**20
    assert host["RestartPolicy"]["Name"] == "no"
    (binding,) = data["NetworkSettings"]["Ports"]["8080/tcp"]
    assert binding["HostIp"] == "127.0.0.1"
    assert started.endpoint == f"http://127.0.0.1:{binding['HostPort']}"
    assert await wait_health(started.endpoint) == 200

    info = await runtime.inspect(started.runtime_ref)
    assert info is not None and info.running and info.endpoint == started.endpoint
    assert (info.replica_id, info.model_id, info.generation) == (
        spec.replica_id, spec.model_id, spec.generation)
    stdout, stderr = await runtime.logs(started.runtime_ref, tail=50)
    assert "model_ready" in stdout + stderr


async def test_stop_then_remove_leaves_nothing(
    runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec]
) -> None:
    started = await runtime.start(make_spec())
    assert await wait_health(started.endpoint) == 200

    await runtime.stop(started.runtime_ref, grace_s=5)
    info = await runtime.inspect(started.runtime_ref)
    assert info is not None and not info.running and info.endpoint is None
    assert info.exit_code == 0, "SIGTERM should be a graceful exit"

    await runtime.remove(started.runtime_ref)
    assert await runtime.inspect(started.runtime_ref) is None
    await runtime.stop(started.runtime_ref, grace_s=1)  # gone: no error
    await runtime.remove(started.runtime_ref)
    with pytest.raises(RuntimeFailure, match="gone"):
        await runtime.logs(started.runtime_ref)


async def test_crashing_replica_reports_exit_code(
    runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec], tmp_path: Path
) -> None:
    # The test image has no sentence-transformers, and the folder no model; the delay lets
    # start() see it running.
    (tmp_path / "nonexistent").mkdir()
    spec = make_spec(source={"backend": "sentence-transformers",
                             "location": str(tmp_path / "nonexistent"), "startup_delay_s": 1})
    started = await runtime.start(spec)

    info = await wait_exit(runtime, started.runtime_ref)
    assert info is not None and not info.running
    assert info.exit_code not in (None, 0) and not info.oom_killed
    stdout, stderr = await runtime.logs(started.runtime_ref)
    assert "/model" in stdout + stderr, "the mount point of the model's folder"


async def test_a_model_folder_missing_on_this_host_is_a_start_error(
    runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec]
) -> None:
    spec = make_spec(source={"backend": "sentence-transformers", "location": "/nonexistent"})
    with pytest.raises(RuntimeFailure, match="not on this host"):
        await runtime.start(spec)


async def test_tiny_memory_limit_is_oom_killed(
    runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec]
) -> None:
    try:
        started = await runtime.start(make_spec(memory_mb=20))
    except RuntimeFailure as exc:  # killed before its port could be read
        assert "OOM-killed" in str(exc)
        return
    info = await wait_exit(runtime, started.runtime_ref)
    assert info is not None and info.oom_killed and info.exit_code == 137
    assert "OOM-killed" in info.describe_exit()


async def test_list_finds_exactly_the_labelled_containers(
    runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec], docker_api: aiodocker.Docker,
    docker_image: str,
) -> None:
    first = make_spec(generation=1)
    second = make_spec(model_id=first.model_id, generation=2)
    refs = {(await runtime.start(spec)).runtime_ref for spec in (first, second)}
    # Created, never started: an unlabelled container and one with a foreign replica label.
    strangers = [await docker_api.containers.create({"Image": docker_image}),
                 await docker_api.containers.create(
                     {"Image": docker_image, "Labels": {LABEL_REPLICA: "not-a-uuid"}})]
    try:
        mine = [i for i in await runtime.list() if i.model_id == first.model_id]
        listed = await runtime.list()
    finally:
        for container in strangers:
            await container.delete(force=True)

    assert {i.runtime_ref for i in mine} == refs
    assert {i.generation for i in mine} == {1, 2}
    assert not {c.id for c in strangers} & {i.runtime_ref for i in listed}
    for ref in refs:
        await runtime.remove(ref)
    assert not [i for i in await runtime.list() if i.model_id == first.model_id]


async def test_missing_image_says_how_to_build_it(
    runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec]
) -> None:
    spec = make_spec(source={"backend": "hashing", "image": "greenroom/absent:nope"})
    with pytest.raises(RuntimeFailure, match=r"image greenroom/absent:nope not found.*build"):
        await runtime.start(spec)


NO_ENGINE = r"(?i)(cannot reach|cannot connect to) (the )?Docker Engine"


async def test_unreachable_engine_is_a_runtime_error(
    make_spec: Callable[..., ReplicaSpec], tmp_path: Path
) -> None:
    settings = Settings(runtime="docker", docker_url=f"unix://{tmp_path}/absent.sock",
                        cluster=TEST_CLUSTER)
    runtime = DockerRuntime(settings)
    try:
        with pytest.raises(RuntimeFailure, match=NO_ENGINE):
            await runtime.start(make_spec())
        with pytest.raises(RuntimeFailure, match=NO_ENGINE):
            await runtime.list()
    finally:
        await runtime.close()
