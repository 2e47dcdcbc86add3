"""Docker runtime: one container per replica, through aiodocker."""

import asyncio
import contextlib
import json
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import structlog
from aiodocker.containers import DockerContainer

from schemas.settings import Settings
from worker.runtimes.base import (
    LABEL_CLUSTER,
    LABEL_INSTALLATION,
    LABEL_REPLICA,
    ReplicaInfo,
    ReplicaSpec,
    RuntimeFailure,
    StartedReplica,
    endpoint_url,
    parse_labels,
    stop_and_remove_each,
)
from worker.runtimes.container_spec import (
    CONTAINER_PORT,
    REPLICA_UID,
    ContainerSpec,
    container_spec,
    to_docker,
)

log = structlog.get_logger(__name__)

PORT_KEY = f"{CONTAINER_PORT}/tcp"
# Bound on one Engine API call; stop adds the grace period on top.
CALL_TIMEOUT_S = 30.0
# Off: no traffic between containers of the installation's network (replica to replica).
NO_ICC = {"com.docker.network.bridge.enable_icc": "false"}
BUILD_HINT = "build it with `python -m launch.image build`"


@asynccontextmanager
async def _engine(what: str, timeout_s: float = CALL_TIMEOUT_S, *, missing: str | None = None,
                  allow: tuple[int, ...] = ()) -> AsyncIterator[None]:
    """Bound an Engine call and turn whatever goes wrong into a readable RuntimeFailure.
    `missing`: the message for the Engine's 404 (what was asked is gone); `allow`: answers
    that are no error (a 404 to a removal: gone already), left at the call that got one."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise RuntimeFailure(f"{what}: Docker Engine gave no answer in {timeout_s:g}s") from exc
    except aiodocker.DockerError as exc:
        if exc.status in allow:
            return
        if missing is not None and exc.status == 404:
            raise RuntimeFailure(missing) from exc
        raise RuntimeFailure(f"{what}: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise RuntimeFailure(f"{what}: cannot reach the Docker Engine ({exc})") from exc


def network_name(cluster: str) -> str:
    """The installation's own bridge network: its replicas and nothing else."""
    return f"greenroom-{cluster}"


def container_name(spec: ReplicaSpec) -> str:
    return f"greenroom-{str(spec.model_id)[:8]}-g{spec.generation}-{str(spec.replica_id)[:8]}"


def _host_port(data: dict[str, Any]) -> int | None:
    """The host port 8080/tcp is published on, from an inspect answer (None once stopped)."""
    bindings = ((data.get("NetworkSettings") or {}).get("Ports") or {}).get(PORT_KEY) or []
    ports = [int(b["HostPort"]) for b in bindings if b.get("HostPort")]
    return ports[0] if ports else None


def _tail(chunks: list[str], lines: int) -> str:
    text = "".join(chunks)
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def writable_by_replica(spec: ReplicaSpec) -> None:
    """The model's own export folder (worker/onnx_variant.py) belongs to the replica's uid,
    which writes its variants there; a worker that is not root leaves it as it is (its uid
    is the owner)."""
    exports = spec.source.get("export_dir")
    if not exports:
        return
    folder = Path(exports)
    if os.geteuid() != 0 or not folder.is_dir():
        return
    for path in [folder, *folder.rglob("*")]:
        with contextlib.suppress(OSError):
            os.chown(path, REPLICA_UID, REPLICA_UID, follow_symlinks=False)


class DockerRuntime:
    """Replicas as containers on one Docker Engine, published on the replica host."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._docker: aiodocker.Docker | None = None
        self._network_ready = False
        self._engine_cpus: int | None = None
        # Published on replica_host; endpoints name the advertised address.
        self.local_host: str | None = settings.replica_endpoint_host

    def _client(self) -> aiodocker.Docker:
        # Created lazily: aiodocker binds its aiohttp session to the running loop.
        if self._docker is None:
            try:
                self._docker = aiodocker.Docker(url=self._settings.docker_url)
            except (AssertionError, ValueError) as exc:
                raise RuntimeFailure(f"no Docker Engine found: {exc or 'no socket'}") from exc
        return self._docker

    def own_labels(self) -> dict[str, str]:
        """The labels that mark a replica as this installation's (worker/installation.py)."""
        if self._settings.cluster is None:
            raise RuntimeFailure("the runtime's cluster is unknown: settings not resolved "
                                 "against the database (worker/installation.py)")
        labels = {LABEL_CLUSTER: self._settings.cluster}
        if self._settings.installation_id is not None:
            labels[LABEL_INSTALLATION] = self._settings.installation_id
        return labels

    def own_filters(self) -> list[str]:
        """`own_labels` as Engine list filters: only this installation's replicas."""
        return [f"{k}={v}" for k, v in self.own_labels().items()]

    def container_spec(self, spec: ReplicaSpec, engine_cpus: int = 1) -> ContainerSpec:
        """The container of `spec` on this runtime, on an engine of `engine_cpus`."""
        return container_spec(spec, self._settings, runtime=self.name,
                              own_labels=self.own_labels(), network=self.network(),
                              engine_cpus=engine_cpus)

    def container_config(self, spec: ReplicaSpec, engine_cpus: int = 1) -> dict[str, Any]:
        """The Engine's create-container body for `spec`, on an engine of `engine_cpus`."""
        return to_docker(self.container_spec(spec, engine_cpus))

    async def start(self, spec: ReplicaSpec) -> StartedReplica:
        """Create and start the container; returns once its host port is known."""
        await self._ensure_network()
        config = self.container_config(spec, await self.engine_cpus())
        writable_by_replica(spec)
        name = container_name(spec)
        container = await self._create(config, name)
        try:
            async with _engine(f"start container {name}"):
                await container.start()
                data = await container.show()
        except RuntimeFailure:
            await self.remove(container.id)
            raise
        port = _host_port(data)
        if port is None:
            raise await self._died_at_start(container.id, name, data)
        log.info("container_started", container=name, id=container.id[:12], port=port,
                 image=config["Image"])
        return StartedReplica(runtime_ref=container.id, endpoint=self._endpoint(port))

    async def _create(self, config: dict[str, Any], name: str) -> DockerContainer:
        async with _engine(f"create container {name}",
                           missing=f"image {config['Image']} not found: {BUILD_HINT}"):
            return await self._client().containers.create(config, name=name)

    async def _died_at_start(self, ref: str, name: str, data: dict[str, Any]) -> RuntimeFailure:
        """The replica exited before its port was read: keep its story, drop the container."""
        info = self._info(data)
        try:
            _, stderr = await self.logs(ref, tail=20)
        except RuntimeFailure:
            stderr = ""
        await self.remove(ref)
        message = f"container {name} {info.describe_exit() if info else 'exited'} at start"
        return RuntimeFailure(f"{message}:\n{stderr}" if stderr else message)

    def _endpoint(self, port: int) -> str:
        return endpoint_url(self._settings.replica_endpoint_host, port)

    def _info(self, data: dict[str, Any]) -> ReplicaInfo | None:
        ids = parse_labels((data.get("Config") or {}).get("Labels") or {})
        if ids is None:
            return None
        state = data.get("State") or {}
        running = bool(state.get("Running"))
        port = _host_port(data)
        return ReplicaInfo(
            runtime_ref=data["Id"], replica_id=ids[0], model_id=ids[1], generation=ids[2],
            running=running,
            exit_code=None if running else state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            endpoint=self._endpoint(port) if running and port else None,
        )

    async def _show(self, ref: str) -> dict[str, Any] | None:
        """The inspect answer for `ref`, or None if the Engine does not know it."""
        data = None
        async with _engine(f"inspect container {ref[:12]}", allow=(404,)):
            data = await self._client().containers.container(ref).show()
        return data

    async def inspect(self, runtime_ref: str) -> ReplicaInfo | None:
        data = await self._show(runtime_ref)
        if data is None:
            return None
        info = self._info(data)
        if info is None:
            raise RuntimeFailure(f"container {runtime_ref[:12]} is not a Greenroom replica")
        return info

    async def stop(self, runtime_ref: str, grace_s: float) -> None:
        grace = max(0, math.ceil(grace_s))
        async with _engine(f"stop container {runtime_ref[:12]}", grace + CALL_TIMEOUT_S,
                           allow=(404,)):
            await self._client().containers.container(runtime_ref).stop(t=grace)

    async def remove(self, runtime_ref: str) -> None:
        # 409: a removal is already in progress, which is what we asked for.
        async with _engine(f"remove container {runtime_ref[:12]}", allow=(404, 409)):
            await self._client().containers.container(runtime_ref).delete(force=True)
        log.info("container_removed", id=runtime_ref[:12])

    async def logs(self, runtime_ref: str, tail: int = 100) -> tuple[str, str]:
        container = self._client().containers.container(runtime_ref)
        async with _engine(f"logs of container {runtime_ref[:12]}",
                           missing=f"container {runtime_ref[:12]} is gone; no logs"):
            out = await container.log(stdout=True, tail=tail)
            err = await container.log(stderr=True, tail=tail)
        return _tail(out, tail), _tail(err, tail)

    async def remove_many(self, runtime_refs: list[str], grace_s: float) -> None:
        await stop_and_remove_each(self, runtime_refs, grace_s)

    async def list(self) -> list[ReplicaInfo]:
        filters = json.dumps({"label": [LABEL_REPLICA, *self.own_filters()]})
        async with _engine("list containers"):
            found = await self._client().containers.list(all=True, filters=filters)
        # The list answer has neither exit codes nor OOM flags: inspect each container.
        shown = await asyncio.gather(*(self._show(c.id) for c in found))
        infos = (self._info(data) for data in shown if data is not None)
        return [info for info in infos if info is not None]

    def network(self) -> str:
        """The network this installation's replicas join (`network_name` of its cluster)."""
        return network_name(self.own_labels()[LABEL_CLUSTER])

    def network_config(self) -> dict[str, Any]:
        """The Engine's create-network body for `network()`: a bridge, ICC off."""
        return {"Name": self.network(), "Driver": "bridge", "CheckDuplicate": True,
                "Options": NO_ICC, "Labels": self.own_labels()}

    async def _ensure_network(self) -> None:
        """Create the installation's network once (another worker may have just made it)."""
        if self._network_ready:
            return
        config = self.network_config()
        name = config["Name"]
        exists = False
        async with _engine(f"create network {name}", allow=(404,)):
            await self._client().networks.get(name)
            exists = True
        if not exists:
            # 409: another worker has just made it.
            async with _engine(f"create network {name}", allow=(409,)):
                await self._client().networks.create(config)
        self._network_ready = True

    async def engine_cpus(self) -> int:
        """The Engine's CPUs (`docker info` NCPU), read once."""
        if self._engine_cpus is None:
            async with _engine("read engine info"):
                info = await self._client().system.info()
            self._engine_cpus = int(info.get("NCPU") or 1)
        return self._engine_cpus

    async def engine_memory_mb(self) -> int:
        """The Engine's memory (`docker info` MemTotal), for the worker's capacity budget."""
        async with _engine("read engine info"):
            info = await self._client().system.info()
        return int(info.get("MemTotal") or 0) // 2**20

    async def close(self) -> None:
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()
