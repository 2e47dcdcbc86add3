"""The small interface every runtime implements, and the replica's environment contract."""

import asyncio
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any, Protocol
from urllib.parse import urlsplit
from uuid import UUID

import structlog

from worker.onnx_variant import onnx_env
from worker.runtimes.environment import replica_env

log = structlog.get_logger(__name__)

# Labels every runtime attaches to a replica, so `list()` can find what Greenroom owns.
LABEL_PREFIX = "io.greenroom."
LABEL_MODEL = LABEL_PREFIX + "model"
LABEL_GENERATION = LABEL_PREFIX + "generation"
LABEL_TASK = LABEL_PREFIX + "task"
LABEL_REPLICA = LABEL_PREFIX + "replica"
LABEL_CLUSTER = LABEL_PREFIX + "cluster"
# The database's installation id (worker/installation.py): never another installation's.
LABEL_INSTALLATION = LABEL_PREFIX + "installation"
# Which runtime started the replica (the swarm runtime lists its services by it).
LABEL_RUNTIME = LABEL_PREFIX + "runtime"


class RuntimeFailure(Exception):
    """Root of every runtime error; the message is shown to users in task details."""


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """What to start: one model-server replica of one generation."""

    replica_id: UUID
    model_id: UUID
    model_identifier: str
    generation: int
    task_id: UUID | None
    source: dict[str, Any]
    memory_mb: int | None = None
    # CPUs the deployment gave each replica (config `cpus`); None: the runtime's default.
    cpus: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Did the deployment set memory_mb itself (else it is what quotas and capacity count)?
    memory_requested: bool = True
    # The runtime_ref of the crashed replica this one replaces (the reconciler's repair):
    # a runtime that restarts replicas itself (swarm) takes over that restart instead of
    # adding one; the others ignore it.
    replaces: str | None = None

    def labels(self) -> dict[str, str]:
        return {
            LABEL_MODEL: str(self.model_id),
            LABEL_GENERATION: str(self.generation),
            LABEL_TASK: str(self.task_id or ""),
            LABEL_REPLICA: str(self.replica_id),
        }


@dataclass(frozen=True, slots=True)
class StartedReplica:
    runtime_ref: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What a runtime sees of a replica it started."""

    runtime_ref: str
    replica_id: UUID
    model_id: UUID
    generation: int
    running: bool
    exit_code: int | None = None
    oom_killed: bool = False
    endpoint: str | None = None
    # Why a replica never ran its server or was stopped from outside (a node rejected its
    # task, its node was drained); None when it simply exited.
    error: str | None = None

    def describe_exit(self) -> str:
        if self.oom_killed:
            return "was OOM-killed (memory limit too small for the model)"
        if self.error:
            return self.error
        if self.exit_code == 137:
            return "was killed (exit code 137: SIGKILL, often the memory limit)"
        if self.exit_code is None:
            return "exited"
        return f"exited with code {self.exit_code}"


def model_server_env(spec: ReplicaSpec, host: str, port: int) -> dict[str, str]:
    """The replica's whole environment bar host basics: MODEL_SERVER_* settings the model
    server reads (model_server/config.py) over the deployment's env, from an allowlist
    (worker/runtimes/environment.py)."""
    source = spec.source
    env = {
        "MODEL_SERVER_BACKEND": source.get("backend") or "sentence-transformers",
        "MODEL_SERVER_MODEL_ID": spec.model_identifier,
        "MODEL_SERVER_HOST": host,
        "MODEL_SERVER_PORT": str(port),
    }
    if spec.task_id is not None:  # the task that started it: its log lines name it
        env["MODEL_SERVER_TASK_ID"] = str(spec.task_id)
    if source.get("location"):
        env["MODEL_SERVER_MODEL"] = str(source["location"])
    if source.get("dimension"):
        env["MODEL_SERVER_DIMENSION"] = str(source["dimension"])
    if source.get("startup_delay_s") is not None:
        env["MODEL_SERVER_STARTUP_DELAY_S"] = str(source["startup_delay_s"])
    if source.get("test_service_time_ms") is not None:
        env["MODEL_SERVER_TEST_SERVICE_TIME_MS"] = str(source["test_service_time_ms"])
    if source.get("test_concurrency") is not None:
        env["MODEL_SERVER_TEST_CONCURRENCY"] = str(source["test_concurrency"])
    if source.get("test_error_rate") is not None:
        env["MODEL_SERVER_TEST_ERROR_RATE"] = str(source["test_error_rate"])
    env |= onnx_env(source)
    return replica_env(env, spec.env)


def compute_threads(cpus: float | None, host_cpus: int) -> int | None:
    """A process replica's compute threads: the CPUs its deployment gave it, rounded as the
    model server reads a container's CPU quota (model_server/config.py), at least one and
    at most the host's; None (the server's default, a thread per CPU it may use) without.
    A container reads its quota itself; a process replica has none, and ran a thread per
    host CPU beside its neighbours' (two replicas on two cores: four threads waiting on
    each other, issue 30's queries beside a job)."""
    if cpus is None:
        return None
    return max(1, min(int(cpus + 0.5), max(1, host_cpus)))


def endpoint_url(host: str, port: int) -> str:
    """A replica's endpoint, `http://host:port`; an IPv6 address goes in brackets."""
    try:
        bracketed = ip_address(host).version == 6
    except ValueError:
        bracketed = False
    return f"http://[{host}]:{port}" if bracketed else f"http://{host}:{port}"


def manages(runtime: "Runtime", endpoint: str | None) -> bool:
    """Whether `runtime` can inspect and stop the replica at `endpoint`: one bound to a host
    (process, docker) only the replicas advertised on that host's address; one spanning
    nodes (`local_host` None: swarm) every replica. A replica not started yet (no endpoint)
    belongs to whoever is starting it, so it counts as managed."""
    if runtime.local_host is None or endpoint is None:
        return True
    return urlsplit(endpoint).hostname == runtime.local_host.strip("[]")


def parse_labels(labels: dict[str, str]) -> tuple[UUID, UUID, int] | None:
    """(replica id, model id, generation) from a replica's labels, or None if not ours."""
    try:
        return (UUID(labels[LABEL_REPLICA]), UUID(labels[LABEL_MODEL]),
                int(labels[LABEL_GENERATION]))
    except (KeyError, ValueError):
        return None


async def stop_and_remove_each(runtime: "Runtime", runtime_refs: list[str],
                               grace_s: float) -> None:
    """`remove_many` for runtimes with one unit per replica: stop and remove each, side by
    side; one that fails is logged and the others still go."""

    async def one(ref: str) -> None:
        try:
            await runtime.stop(ref, grace_s)
            await runtime.remove(ref)
        except RuntimeFailure as exc:
            log.warning("replica_remove_failed", ref=ref, error=str(exc))

    await asyncio.gather(*(one(ref) for ref in runtime_refs))


class Runtime(Protocol):
    """Start, stop, remove, read logs of, and list replicas."""

    name: str
    # The advertised address of the one host whose replicas this runtime can inspect and
    # stop (process and docker: this worker's host); None when it reaches replicas on every
    # node (swarm). Workers on other hosts leave a host's replicas to that host's workers.
    local_host: str | None

    async def start(self, spec: ReplicaSpec) -> StartedReplica:
        """Start a replica; returns at once, readiness is checked over HTTP by the caller."""
        ...

    async def inspect(self, runtime_ref: str) -> ReplicaInfo | None:
        """The replica's state, or None if the runtime no longer knows it."""
        ...

    async def stop(self, runtime_ref: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; no error if already gone."""
        ...

    async def remove(self, runtime_ref: str) -> None:
        """Forget the replica and free what it held; no error if already gone."""
        ...

    async def logs(self, runtime_ref: str, tail: int = 100) -> tuple[str, str]:
        """The last `tail` lines of (stdout, stderr)."""
        ...

    async def remove_many(self, runtime_refs: list[str], grace_s: float) -> None:
        """Stop and remove these replicas together (a generation, or some of one); no
        error for ones already gone. Runtimes of one unit per replica do each in turn
        (`stop_and_remove_each`); the swarm runtime removes a generation's service."""
        ...

    async def list(self) -> list[ReplicaInfo]:
        """Every replica this runtime holds that carries Greenroom's labels."""
        ...

    async def close(self) -> None:
        ...
