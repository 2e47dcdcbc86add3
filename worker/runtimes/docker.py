"""Docker runtime: one container per replica, through aiodocker."""

import asyncio
import json
import math
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
    LABEL_REPLICA,
    ReplicaInfo,
    ReplicaSpec,
    RuntimeError_,
    StartedReplica,
    endpoint_url,
    model_server_env,
    parse_labels,
    stop_and_remove_each,
)

log = structlog.get_logger(__name__)

CONTAINER_PORT = 8080
PORT_KEY = f"{CONTAINER_PORT}/tcp"
# Bound on one Engine API call; stop adds the grace period on top.
CALL_TIMEOUT_S = 30.0
# Room for what the model server and its libraries write (temp files, caches).
TMPFS_MB = 256
MODEL_MOUNT = "/model"
BUILD_HINT = "build it with `python -m launch.image build`"


@asynccontextmanager
async def _engine(what: str, timeout_s: float = CALL_TIMEOUT_S) -> AsyncIterator[None]:
    """Bound an Engine call and turn whatever goes wrong into a readable RuntimeError_."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise RuntimeError_(f"{what}: Docker Engine gave no answer in {timeout_s:g}s") from exc
    except aiodocker.DockerError as exc:
        raise RuntimeError_(f"{what}: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise RuntimeError_(f"{what}: cannot reach the Docker Engine ({exc})") from exc


def hardening(settings: Settings) -> dict[str, Any]:
    """HostConfig that keeps a replica's code in its box: a model may bring any code."""
    return {
        "Privileged": False,
        "NetworkMode": "bridge",  # never "host": the control plane listens on loopback
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={TMPFS_MB}m"},
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "PidsLimit": settings.replica_pids_limit,
    }


def model_mount(spec: ReplicaSpec) -> tuple[list[str], dict[str, str]]:
    """A model directory on this host (the model store's, or an admin's path) bind-mounted
    read-only at MODEL_MOUNT, and the env that points the server there. The only bind a
    replica gets: never the Docker socket, never the rest of the store."""
    location = str(spec.source.get("location") or "")
    if not location.startswith("/"):
        return [], {}  # package:NAME or the image's own default
    folder = Path(location)
    if not folder.is_dir():
        raise RuntimeError_(f"model directory {location} is not on this host")
    return [f"{folder.resolve()}:{MODEL_MOUNT}:ro"], {"MODEL_SERVER_MODEL": MODEL_MOUNT}


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


def export_binds(spec: ReplicaSpec) -> list[str]:
    """The onnx backend's export cache, read-write at the same path (worker/onnx_variant.py)."""
    exports = spec.source.get("export_dir")
    return [f"{exports}:{exports}:rw"] if exports else []


class DockerRuntime:
    """Replicas as containers on one Docker Engine, published on the replica host."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._docker: aiodocker.Docker | None = None
        # Published on replica_host; endpoints name the advertised address.
        self.local_host: str | None = settings.replica_endpoint_host

    def _client(self) -> aiodocker.Docker:
        # Created lazily: aiodocker binds its aiohttp session to the running loop.
        if self._docker is None:
            try:
                self._docker = aiodocker.Docker(url=self._settings.docker_url)
            except (AssertionError, ValueError) as exc:
                raise RuntimeError_(f"no Docker Engine found: {exc or 'no socket'}") from exc
        return self._docker

    def container_config(self, spec: ReplicaSpec) -> dict[str, Any]:
        """The Engine's create-container body for `spec`."""
        # HOME on the tmpfs: the root filesystem is read-only.
        binds, mount_env = model_mount(spec)
        env = {**model_server_env(spec, host="0.0.0.0", port=CONTAINER_PORT), "HOME": "/tmp",
               **mount_env}
        memory = (spec.memory_mb or self._settings.replica_memory_mb) * 2**20
        host_config: dict[str, Any] = {
            "PortBindings": {PORT_KEY: [{"HostIp": self._settings.replica_host,
                                         "HostPort": ""}]},
            # Not "on-failure": a restart loop would hide a crash from the rollout's
            # fail-fast check; the reconciler replaces crashed replicas instead.
            "RestartPolicy": {"Name": "no"},
            # MemorySwap equal to Memory: no swap, so the limit is the limit.
            "Memory": memory, "MemorySwap": memory,
            **hardening(self._settings),
            "Binds": binds + export_binds(spec),
        }
        return {
            "Image": spec.source.get("image") or self._settings.docker_image,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {**spec.labels(), LABEL_CLUSTER: self._settings.cluster},
            "ExposedPorts": {PORT_KEY: {}},
            "HostConfig": host_config,
        }

    async def start(self, spec: ReplicaSpec) -> StartedReplica:
        """Create and start the container; returns once its host port is known."""
        config = self.container_config(spec)
        name = container_name(spec)
        container = await self._create(config, name)
        try:
            async with _engine(f"start container {name}"):
                await container.start()
                data = await container.show()
        except RuntimeError_:
            await self.remove(container.id)
            raise
        port = _host_port(data)
        if port is None:
            raise await self._died_at_start(container.id, name, data)
        log.info("container_started", container=name, id=container.id[:12], port=port,
                 image=config["Image"])
        return StartedReplica(runtime_ref=container.id, endpoint=self._endpoint(port))

    async def _create(self, config: dict[str, Any], name: str) -> DockerContainer:
        try:
            async with _engine(f"create container {name}"):
                return await self._client().containers.create(config, name=name)
        except RuntimeError_ as exc:
            cause = exc.__cause__
            if isinstance(cause, aiodocker.DockerError) and cause.status == 404:
                raise RuntimeError_(f"image {config['Image']} not found: {BUILD_HINT}") from cause
            raise

    async def _died_at_start(self, ref: str, name: str, data: dict[str, Any]) -> RuntimeError_:
        """The replica exited before its port was read: keep its story, drop the container."""
        info = self._info(data)
        try:
            _, stderr = await self.logs(ref, tail=20)
        except RuntimeError_:
            stderr = ""
        await self.remove(ref)
        message = f"container {name} {info.describe_exit() if info else 'exited'} at start"
        return RuntimeError_(f"{message}:\n{stderr}" if stderr else message)

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
        async with _engine(f"inspect container {ref[:12]}"):
            try:
                return await self._client().containers.container(ref).show()
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return None
                raise

    async def inspect(self, runtime_ref: str) -> ReplicaInfo | None:
        data = await self._show(runtime_ref)
        if data is None:
            return None
        info = self._info(data)
        if info is None:
            raise RuntimeError_(f"container {runtime_ref[:12]} is not a Greenroom replica")
        return info

    async def stop(self, runtime_ref: str, grace_s: float) -> None:
        grace = max(0, math.ceil(grace_s))
        async with _engine(f"stop container {runtime_ref[:12]}", grace + CALL_TIMEOUT_S):
            try:
                await self._client().containers.container(runtime_ref).stop(t=grace)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise

    async def remove(self, runtime_ref: str) -> None:
        async with _engine(f"remove container {runtime_ref[:12]}"):
            try:
                await self._client().containers.container(runtime_ref).delete(force=True)
            except aiodocker.DockerError as exc:
                # 409: a removal is already in progress, which is what we asked for.
                if exc.status not in (404, 409):
                    raise
        log.info("container_removed", id=runtime_ref[:12])

    async def logs(self, runtime_ref: str, tail: int = 100) -> tuple[str, str]:
        container = self._client().containers.container(runtime_ref)
        try:
            async with _engine(f"logs of container {runtime_ref[:12]}"):
                out = await container.log(stdout=True, tail=tail)
                err = await container.log(stderr=True, tail=tail)
        except RuntimeError_ as exc:
            cause = exc.__cause__
            if isinstance(cause, aiodocker.DockerError) and cause.status == 404:
                raise RuntimeError_(f"container {runtime_ref[:12]} is gone; no logs") from cause
            raise
        return _tail(out, tail), _tail(err, tail)

    async def remove_many(self, runtime_refs: list[str], grace_s: float) -> None:
        await stop_and_remove_each(self, runtime_refs, grace_s)

    async def list(self) -> list[ReplicaInfo]:
        filters = json.dumps({"label": [LABEL_REPLICA,
                                        f"{LABEL_CLUSTER}={self._settings.cluster}"]})
        async with _engine("list containers"):
            found = await self._client().containers.list(all=True, filters=filters)
        # The list answer has neither exit codes nor OOM flags: inspect each container.
        shown = await asyncio.gather(*(self._show(c.id) for c in found))
        infos = (self._info(data) for data in shown if data is not None)
        return [info for info in infos if info is not None]

    async def engine_memory_mb(self) -> int:
        """The Engine's memory (`docker info` MemTotal), for the worker's capacity budget."""
        async with _engine("read engine info"):
            info = await self._client().system.info()
        return int(info.get("MemTotal") or 0) // 2**20

    async def close(self) -> None:
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()
