"""The replica's container spec, written once, and what each runtime's translator makes of
it: the Docker Engine's create-container body and the Swarm service's TaskTemplate. Fast,
no Docker Engine (tests/worker/test_docker_runtime.py and test_swarm_runtime.py start the
real containers and services)."""

from pathlib import Path
from uuid import UUID

import pytest

from schemas.settings import Settings
from worker.runtimes.base import (
    LABEL_CLUSTER,
    LABEL_GENERATION,
    LABEL_INSTALLATION,
    LABEL_MODEL,
    LABEL_REPLICA,
    LABEL_RUNTIME,
    LABEL_TASK,
    ReplicaSpec,
    RuntimeFailure,
)
from worker.runtimes.container_spec import (
    Bind,
    ContainerSpec,
    container_spec,
    to_docker,
    to_swarm,
)
from worker.runtimes.docker import DockerRuntime
from worker.runtimes.swarm import SwarmRuntime

MB = 2**20
REPLICA, MODEL, TASK = UUID(int=1), UUID(int=2), UUID(int=3)
OWN = {LABEL_CLUSTER: "c1", LABEL_INSTALLATION: "inst-1"}


def _replica(tmp_path: Path, **source: object) -> ReplicaSpec:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    return ReplicaSpec(
        replica_id=REPLICA, model_id=MODEL, model_identifier="acme/m", generation=3,
        task_id=TASK, memory_mb=512, cpus=1.5, env={"MINE": "kept", "GREENROOM_SECRET_KEY": "x"},
        source={"backend": "hashing", "dimension": 16, "location": str(model_dir), **source})


def _settings() -> Settings:
    return Settings(runtime="docker", docker_image="greenroom/model-server:t", cluster="c1",
                    installation_id="inst-1", replica_host="127.0.0.2", stop_grace_s=7,
                    replica_pids_limit=300)


@pytest.fixture
def spec(tmp_path: Path) -> ContainerSpec:
    exports = tmp_path / "exports"
    exports.mkdir()
    return container_spec(_replica(tmp_path, export_dir=str(exports)), _settings(),
                          runtime="docker", own_labels=OWN, network="greenroom-c1",
                          engine_cpus=4)


def test_spec_is_built_once_from_the_replica_and_the_settings(
        spec: ContainerSpec, tmp_path: Path) -> None:
    assert spec.image == "greenroom/model-server:t"
    assert spec.user == "10001:10001"
    assert spec.labels == {LABEL_MODEL: str(MODEL), LABEL_GENERATION: "3", LABEL_TASK: str(TASK),
                           LABEL_REPLICA: str(REPLICA), LABEL_CLUSTER: "c1",
                           LABEL_INSTALLATION: "inst-1", LABEL_RUNTIME: "docker"}
    assert spec.binds == (Bind(str((tmp_path / "model").resolve()), "/model", read_only=True),
                          Bind(str(tmp_path / "exports"), str(tmp_path / "exports"),
                               read_only=False))
    assert spec.env["MODEL_SERVER_MODEL"] == "/model" and spec.env["HOME"] == "/tmp"
    assert spec.env["MODEL_SERVER_PORT"] == "8080" and spec.env["MINE"] == "kept"
    assert "GREENROOM_SECRET_KEY" not in spec.env
    assert spec.memory_bytes == 512 * MB and spec.nano_cpus == 1_500_000_000
    assert spec.pids_limit == 300 and spec.stop_grace_s == 7
    assert spec.read_only_rootfs and spec.no_new_privileges and spec.cap_drop == ("ALL",)


def test_to_docker_is_the_engines_create_body(spec: ContainerSpec, tmp_path: Path) -> None:
    model, exports = (tmp_path / "model").resolve(), tmp_path / "exports"
    assert to_docker(spec) == {
        "Image": "greenroom/model-server:t",
        "User": "10001:10001",
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Labels": spec.labels,
        "ExposedPorts": {"8080/tcp": {}},
        "HostConfig": {
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.2", "HostPort": ""}]},
            "RestartPolicy": {"Name": "no"},
            "Memory": 512 * MB, "MemorySwap": 512 * MB,
            "NanoCpus": 1_500_000_000,
            "Privileged": False,
            "NetworkMode": "greenroom-c1",
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=256m"},
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "PidsLimit": 300,
            "Binds": [f"{model}:/model:ro", f"{exports}:{exports}:rw"],
        },
    }


def test_to_swarm_is_the_services_task_template(spec: ContainerSpec, tmp_path: Path) -> None:
    model, exports = (tmp_path / "model").resolve(), tmp_path / "exports"
    labels = {k: v for k, v in spec.labels.items() if k != LABEL_REPLICA}
    assert to_swarm(spec) == {
        "ContainerSpec": {
            "Image": "greenroom/model-server:t",
            "User": "10001:10001",
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Labels": labels,
            "ReadOnly": True,
            "Mounts": [
                {"Type": "bind", "Source": str(model), "Target": "/model", "ReadOnly": True},
                {"Type": "bind", "Source": str(exports), "Target": str(exports),
                 "ReadOnly": False},
                {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 256 * MB}},
            ],
            "CapabilityDrop": ["ALL"],
            "StopGracePeriod": 7_000_000_000,
        },
        "Resources": {
            "Limits": {"MemoryBytes": 512 * MB, "Pids": 300, "NanoCPUs": 1_500_000_000},
            "Reservations": {"MemoryBytes": 512 * MB},
        },
        "RestartPolicy": {"Condition": "on-failure", "Delay": 1_000_000_000, "MaxAttempts": 0},
        "Placement": {"Preferences": [{"Spread": {"SpreadDescriptor": "node.id"}}]},
        "Networks": [{"Target": "greenroom-c1"}],
    }


def test_both_runtimes_label_a_replica_with_one_set(tmp_path: Path) -> None:
    """Docker and Swarm attach the same labels, the installation's included; Swarm's template
    leaves out only the per-replica one (its slot labels name the replica instead)."""
    replica = _replica(tmp_path)
    docker = DockerRuntime(_settings())
    swarm = SwarmRuntime(_settings())
    docker_labels = docker.container_config(replica, 4)["Labels"]
    template = swarm.task_template(replica)
    service = swarm.service_spec(replica)
    expected = {LABEL_MODEL: str(MODEL), LABEL_GENERATION: "3", LABEL_TASK: str(TASK),
                LABEL_CLUSTER: "c1", LABEL_INSTALLATION: "inst-1"}
    assert docker_labels == {**expected, LABEL_REPLICA: str(REPLICA), LABEL_RUNTIME: "docker"}
    assert template["ContainerSpec"]["Labels"] == {**expected, LABEL_RUNTIME: "swarm"}
    assert service["Labels"] == {**expected, LABEL_RUNTIME: "swarm",
                                 "io.greenroom.slot.1": str(REPLICA)}
    # Each on its own network: the Docker bridge, the swarm's overlay.
    assert docker.container_config(replica)["HostConfig"]["NetworkMode"] == "greenroom-c1"
    assert template["Networks"] == [{"Target": "greenroom-c1-swarm"}]


def test_both_translators_say_the_same_of_what_both_can_say(spec: ContainerSpec) -> None:
    docker, swarm = to_docker(spec), to_swarm(spec)
    host, container = docker["HostConfig"], swarm["ContainerSpec"]
    limits = swarm["Resources"]["Limits"]
    assert docker["Image"] == container["Image"] and docker["User"] == container["User"]
    assert docker["Env"] == container["Env"]
    assert host["Memory"] == limits["MemoryBytes"] and host["NanoCpus"] == limits["NanoCPUs"]
    assert host["PidsLimit"] == limits["Pids"]
    assert host["ReadonlyRootfs"] == container["ReadOnly"] is True
    assert host["CapDrop"] == container["CapabilityDrop"] == ["ALL"]


def test_image_cpus_and_memory_fall_back_to_the_settings(tmp_path: Path) -> None:
    replica = ReplicaSpec(replica_id=REPLICA, model_id=MODEL, model_identifier="acme/m",
                          generation=1, task_id=None, memory_mb=None,
                          source={"backend": "hashing", "image": "mine:1"})
    built = container_spec(replica, _settings(), runtime="docker", own_labels=OWN,
                           network="n", engine_cpus=16)
    assert built.image == "mine:1" and built.binds == ()
    assert built.memory_bytes == Settings().replica_memory_mb * MB
    assert built.nano_cpus == 8 * 10**9, "half the engine's CPUs by default"
    assert built.labels[LABEL_TASK] == "" and "MODEL_SERVER_MODEL" not in built.env


def test_a_model_directory_not_on_this_host_is_refused(tmp_path: Path) -> None:
    replica = _replica(tmp_path, location=str(tmp_path / "absent"))
    with pytest.raises(RuntimeFailure, match=r"model directory .*absent is not on this host"):
        container_spec(replica, _settings(), runtime="swarm", own_labels=OWN, network="n",
                       engine_cpus=1)
