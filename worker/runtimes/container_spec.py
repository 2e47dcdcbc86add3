"""A replica's container, described once for the Docker and the Swarm runtime.

`container_spec()` builds a `ContainerSpec` from the replica's `ReplicaSpec` and the
worker's settings: image, user, environment, labels, mounts, resource limits, hardening and
network. `to_docker()` writes it as the Engine's create-container body, `to_swarm()` as a
Swarm service's TaskTemplate. What a runtime decides on its own (Docker's port binding and
restart policy "no", Swarm's restart policy, placement and published ports) stays in that
translator; what Swarm cannot say that Docker does is written there, next to it.

No health check in either: the rollout reads a replica's readiness over HTTP itself.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.settings import Settings
from worker.runtimes.base import (
    LABEL_REPLICA,
    LABEL_RUNTIME,
    ReplicaSpec,
    RuntimeFailure,
    model_server_env,
)

# The port the model server listens on inside its container.
CONTAINER_PORT = 8080
# Room for what the model server and its libraries write (temp files, caches).
TMPFS_MB = 256
TMPFS_PATH = "/tmp"
MODEL_MOUNT = "/model"
# Every replica runs as this uid and gid, never root (the images' own USER too).
REPLICA_UID = 10001
REPLICA_USER = f"{REPLICA_UID}:{REPLICA_UID}"


@dataclass(frozen=True, slots=True)
class Bind:
    """A folder of the host seen inside the replica's container."""

    source: str
    target: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """What a replica's container is, whichever runtime starts it."""

    image: str
    env: dict[str, str]
    # One set for both runtimes: the replica's ids, its installation's, and the runtime's name.
    labels: dict[str, str]
    binds: tuple[Bind, ...]
    memory_bytes: int
    nano_cpus: int
    pids_limit: int
    # The installation's own network (a bridge on Docker, an overlay on Swarm).
    network: str
    # The host address the container's port is published on.
    publish_host: str
    stop_grace_s: float
    user: str = REPLICA_USER
    port: int = CONTAINER_PORT
    tmpfs_mb: int = TMPFS_MB
    read_only_rootfs: bool = True
    cap_drop: tuple[str, ...] = ("ALL",)
    no_new_privileges: bool = True


def cpu_limit(spec_cpus: float | None, settings: Settings, engine_cpus: int) -> float:
    """CPUs a replica may use: the deployment's, else `replica_cpus`, else the engine's
    CPUs times `capacity_share` (at least one): no replica takes the whole host. Never more
    than the engine has (it refuses a container asking for more)."""
    if spec_cpus is not None:
        wanted = spec_cpus
    elif settings.replica_cpus is not None:
        wanted = settings.replica_cpus
    else:
        wanted = max(1.0, engine_cpus * settings.capacity_share)
    return min(wanted, float(max(engine_cpus, 1)))


def replica_binds(spec: ReplicaSpec) -> tuple[tuple[Bind, ...], dict[str, str]]:
    """The replica's binds and the env that points the server at them: a model directory on
    this host (the model store's, or an admin's path) read-only at MODEL_MOUNT, and the onnx
    backend's export cache read-write at its own path (worker/onnx_variant.py). Never the
    Docker socket, never the rest of the store. On a swarm the folder must exist at the same
    path on every node a task may land on: it is checked here, on the worker's host."""
    binds: list[Bind] = []
    env: dict[str, str] = {}
    location = str(spec.source.get("location") or "")
    if location.startswith("/"):  # else package:NAME or the image's own default
        folder = Path(location)
        if not folder.is_dir():
            raise RuntimeFailure(f"model directory {location} is not on this host")
        binds.append(Bind(str(folder.resolve()), MODEL_MOUNT, read_only=True))
        env["MODEL_SERVER_MODEL"] = MODEL_MOUNT
    exports = spec.source.get("export_dir")
    if exports:
        binds.append(Bind(str(exports), str(exports), read_only=False))
    return tuple(binds), env


def container_spec(spec: ReplicaSpec, settings: Settings, *, runtime: str,
                   own_labels: dict[str, str], network: str, engine_cpus: int) -> ContainerSpec:
    """The container of replica `spec`, for `runtime` (its name) on an engine of
    `engine_cpus`; `own_labels` mark it as this installation's (worker/installation.py)."""
    binds, mount_env = replica_binds(spec)
    # HOME on the tmpfs: the root filesystem is read-only.
    env = {**model_server_env(spec, host="0.0.0.0", port=CONTAINER_PORT), "HOME": TMPFS_PATH,
           **mount_env}
    return ContainerSpec(
        # A replica of an export the worker prepared runs without torch: the slim image.
        image=spec.source.get("image") or (spec.source.get("export_entry") and
                                           settings.docker_image_onnx) or settings.docker_image,
        env=env,
        labels={**spec.labels(), **own_labels, LABEL_RUNTIME: runtime},
        binds=binds,
        memory_bytes=(spec.memory_mb or settings.replica_memory_mb) * 2**20,
        nano_cpus=int(cpu_limit(spec.cpus, settings, engine_cpus) * 1e9),
        pids_limit=settings.replica_pids_limit,
        network=network,
        publish_host=settings.replica_host,
        stop_grace_s=max(0.0, settings.stop_grace_s),
    )


# ---------------------------------------------------------------- Docker


def to_docker(spec: ContainerSpec) -> dict[str, Any]:
    """The Engine's create-container body for `spec`."""
    port_key = f"{spec.port}/tcp"
    host_config: dict[str, Any] = {
        "PortBindings": {port_key: [{"HostIp": spec.publish_host, "HostPort": ""}]},
        # Not "on-failure": a restart loop would hide a crash from the rollout's fail-fast
        # check; the reconciler replaces crashed replicas instead.
        "RestartPolicy": {"Name": "no"},
        # MemorySwap equal to Memory: no swap, so the limit is the limit.
        "Memory": spec.memory_bytes, "MemorySwap": spec.memory_bytes,
        "NanoCpus": spec.nano_cpus,
        # Keeps a replica's code in its box: a model may bring any code.
        "Privileged": False,
        # Never "host" (the control plane listens on loopback), never the default bridge
        # (every container on it reaches every other): the installation's own network,
        # inter-container traffic off (DockerRuntime.network_config).
        "NetworkMode": spec.network,
        "ReadonlyRootfs": spec.read_only_rootfs,
        "Tmpfs": {TMPFS_PATH: f"rw,nosuid,nodev,size={spec.tmpfs_mb}m"},
        "CapDrop": list(spec.cap_drop),
        "SecurityOpt": ["no-new-privileges:true"] if spec.no_new_privileges else [],
        "PidsLimit": spec.pids_limit,
        "Binds": [f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}" for b in spec.binds],
    }
    # No StopTimeout: the runtime's stop passes its grace (`stop_grace_s`) on each call.
    return {
        "Image": spec.image,
        "User": spec.user,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Labels": dict(spec.labels),
        "ExposedPorts": {port_key: {}},
        "HostConfig": host_config,
    }


# ---------------------------------------------------------------- Swarm

# How long Swarm waits before it restarts a failed task in its slot.
SWARM_RESTART_DELAY_S = 1.0


def to_swarm(spec: ContainerSpec) -> dict[str, Any]:
    """A Swarm service's TaskTemplate for `spec`: what every task of the service runs.

    What Swarm cannot say of what `to_docker` does, on this Engine API (1.41):
    - no `no-new-privileges` on a service's container (a later API's
      `Privileges.NoNewPrivileges`); the uid 10001, the dropped capabilities and the
      read-only root still hold;
    - no `MemorySwap`: swap follows the node's defaults;
    - no tmpfs mount options bar its size (Swarm's own defaults for the rest);
    - no ICC switch on an overlay network (SwarmRuntime.network_config): the replica
      secret guards each replica's port;
    - no host address to publish on: host-mode ports (SwarmRuntime.service_spec) listen on
      every address of the node, so `publish_host` is not used;
    - one template for every task of a generation, so no per-replica label: the replica's
      id is the service's slot label (`io.greenroom.slot.<N>`) instead of LABEL_REPLICA.
    """
    mounts: list[dict[str, Any]] = [
        {"Type": "bind", "Source": b.source, "Target": b.target, "ReadOnly": b.read_only}
        for b in spec.binds]
    mounts.append({"Type": "tmpfs", "Target": TMPFS_PATH,
                   "TmpfsOptions": {"SizeBytes": spec.tmpfs_mb * 2**20}})
    return {
        "ContainerSpec": {
            "Image": spec.image,
            "User": spec.user,
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Labels": {k: v for k, v in spec.labels.items() if k != LABEL_REPLICA},
            "ReadOnly": spec.read_only_rootfs,
            "Mounts": mounts,
            "CapabilityDrop": list(spec.cap_drop),
            "StopGracePeriod": int(spec.stop_grace_s * 1e9),
        },
        "Resources": {
            # The reservation equals the limit: the scheduler only places a replica on a
            # node with that much memory not yet reserved.
            "Limits": {"MemoryBytes": spec.memory_bytes, "Pids": spec.pids_limit,
                       "NanoCPUs": spec.nano_cpus},
            "Reservations": {"MemoryBytes": spec.memory_bytes},
        },
        # Swarm restarts a failed task in its slot (worker/runtimes/swarm.py's docstring).
        "RestartPolicy": {"Condition": "on-failure", "Delay": int(SWARM_RESTART_DELAY_S * 1e9),
                          "MaxAttempts": 0},
        "Placement": {"Preferences": [{"Spread": {"SpreadDescriptor": "node.id"}}]},
        # The installation's own overlay, not the nodes' default bridge; its egress goes
        # through each node's docker_gwbridge, where inter-container traffic is off.
        "Networks": [{"Target": spec.network}],
    }
