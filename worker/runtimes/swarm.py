"""Swarm runtime: one Docker Swarm service per generation, each replica one of its tasks.

How a service per generation maps onto the per-replica runtime interface (rollout,
repair, scaling and the reconciler stay runtime-agnostic):

- `start(spec)` adds one task to the service of the spec's generation, creating the
  service (replicas 1) for the generation's first replica and raising `replicas` by one
  for each next one: a generation of N replicas is one service of `replicas` N. Swarm
  fills the lowest free slot; the service keeps which replica owns which slot in a label
  (`io.greenroom.slot.<N>` = `<replica id>/<task id>`). `start` returns once the new task
  runs and has its host port.
- A replica's `runtime_ref` is its task id. `inspect` and `logs` read the task (logs come
  through the manager from whichever node ran it); its endpoint is its node's address
  (`Status.Addr`) and the host port Swarm published for it (`Status.PortStatus`).
- `remove_many(refs)` removes replicas together: when they hold every slot that still
  runs or restarts (a generation going away: a switch, a failed rollout, a delete) the
  service is deleted and Swarm stops its tasks (SIGTERM, SIGKILL after the stop grace);
  when they are some of them (a scale-down) each task's container is stopped and
  `replicas` lowered to what is left. `stop` and `remove` are the same for one task.

Restart policy: `on-failure` (delay 1 s, no attempt limit). A task that exits non-zero or
is OOM-killed is a dead task with its exit code, error and logs, so the rollout's
fail-fast check reports it (exit code, OOM, log tail) as on the Docker runtime, and fails
the rollout, which deletes the service. For a serving generation the reconciler's repair
sees the replica's task dead, marks it failed with an event and starts a replacement; the
replacement (`spec.replaces` = the dead task) takes over the task Swarm restarted in the
same slot instead of adding one, so the service keeps `replicas` tasks and the routing
table gets the new endpoint. A drained or lost node's tasks are rescheduled by Swarm on
the nodes left and taken over the same way. Condition `none` was rejected: Swarm counts a
dead task's slot as filled for good, so a replacement could only come from scaling down
(where Swarm, not Greenroom, picks the slot to drop) and up again.

Limits: one task of a service can only be stopped on its own (a scale-down) when it runs
on the node of the engine this worker talks to; elsewhere that is refused with a clear
error (a whole generation can always be removed). Host-mode ports listen on every address
of the node. This Engine API (1.41) cannot set `no-new-privileges` or `MemorySwap` on a
service: swap follows the node's defaults (the container spec, written once for Docker and
Swarm, lists what Swarm leaves out: `to_swarm` in worker/runtimes/container_spec.py).
Every node must hold the image (no registry: `docker save | docker load`), and a model
folder from the store must exist at the same path on every node.
"""

import asyncio
import builtins
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import aiodocker
import structlog
from aiodocker.multiplexed import multiplexed_result_list

from schemas.settings import Settings
from worker.runtimes.base import (
    LABEL_GENERATION,
    LABEL_MODEL,
    LABEL_PREFIX,
    LABEL_RUNTIME,
    ReplicaInfo,
    ReplicaSpec,
    RuntimeFailure,
    StartedReplica,
)
from worker.runtimes.container_spec import CONTAINER_PORT, to_swarm
from worker.runtimes.docker import BUILD_HINT, DockerRuntime, _engine, _tail

log = structlog.get_logger(__name__)

LABEL_SLOT_PREFIX = LABEL_PREFIX + "slot."
# Task states after which a task never runs again (Swarm's task lifecycle).
TERMINAL = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
# How long `start` waits for the new task to run and publish its port.
START_TIMEOUT_S = 60.0
POLL_S = 0.2
# Concurrent updates of one service (two workers, a repair beside a scale) conflict on
# the service's version; each retries from a fresh read this many times.
UPDATE_ATTEMPTS = 8
SERVICE_REF_PREFIX = "service:"
# How long a replacement waits for Swarm to make the restarted task of a crashed one.
ADOPT_WAIT_S = 5.0
# How long a task told to shut down may wait for its restart before the slot counts as given up.
SHUTDOWN_GRACE_S = 2.0
# A restarted task nobody has taken over yet is not listed for this long, so the orphan
# sweep of another worker does not remove it while the repair is taking it over.
ADOPT_GRACE_S = 60.0
T = TypeVar("T")


def service_name(model_id: UUID, generation: int) -> str:
    return f"greenroom-{model_id}-g{generation}"


def _slot_label(slot: int) -> str:
    return f"{LABEL_SLOT_PREFIX}{slot}"


def _state(task: dict[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State") or "")


def _dead(task: dict[str, Any]) -> bool:
    """The task will not run again (exited, rejected, or told to shut down)."""
    return _state(task) in TERMINAL or task.get("DesiredState") not in ("running", "ready")


def _published_port(task: dict[str, Any]) -> int | None:
    ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    for port in ports:
        if port.get("TargetPort") == CONTAINER_PORT and port.get("PublishedPort"):
            return int(port["PublishedPort"])
    return None


def _version(task: dict[str, Any]) -> int:
    return int(((task.get("Version") or {}).get("Index")) or 0)


def latest_per_slot(tasks: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The newest task of each slot (Swarm keeps a few dead ones per slot as history)."""
    latest: dict[int, dict[str, Any]] = {}
    for task in tasks:
        slot = int(task.get("Slot") or 0)
        if slot and (slot not in latest or _version(task) > _version(latest[slot])):
            latest[slot] = task
    return latest


def live_slots(tasks: Iterable[dict[str, Any]]) -> set[int]:
    return {slot for slot, task in latest_per_slot(tasks).items() if not _dead(task)}


class SwarmRuntime(DockerRuntime):
    """Replicas as tasks of one Swarm service per generation, on any node of the swarm.

    Shares the Docker runtime's Engine client; the worker talks to a manager node
    (`GREENROOM_DOCKER_URL`, default the local socket).
    """

    name = "swarm"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # Replicas on every node are this runtime's to inspect, repair and remove.
        self.local_host = None
        self._node_addr: dict[str, tuple[str, str]] = {}
        self._local_node: str | None = None
        self._service_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ the service's shape

    def task_template(self, spec: ReplicaSpec) -> dict[str, Any]:
        """The service's task template: what every replica of the generation runs (the
        default share of the manager's CPUs: `start` reads them first)."""
        return to_swarm(self.container_spec(spec, self._engine_cpus or 1))

    def network(self) -> str:
        return f"{super().network()}-swarm"

    def network_config(self) -> dict[str, Any]:
        """An overlay (overlays have no ICC switch: the replica secret guards each port)."""
        return {"Name": self.network(), "Driver": "overlay", "CheckDuplicate": True,
                "Labels": self.own_labels()}

    def service_spec(self, spec: ReplicaSpec) -> dict[str, Any]:
        """The Engine's create-service body for the generation of `spec`, one replica."""
        template = self.task_template(spec)
        return {
            "Name": service_name(spec.model_id, spec.generation),
            # The template's labels, and which replica owns slot 1.
            "Labels": {**template["ContainerSpec"]["Labels"],
                       _slot_label(1): str(spec.replica_id)},
            "TaskTemplate": template,
            "Mode": {"Replicated": {"Replicas": 1}},
            # Host mode, no published port: each task gets its own port on its node. The
            # routing mesh (ingress) is not used: the gateway picks the replica itself.
            "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": CONTAINER_PORT,
                                        "PublishMode": "host"}]},
        }

    # ------------------------------------------------------------ Engine calls

    async def _local_node_id(self) -> str:
        if self._local_node is None:
            async with _engine("read engine info"):
                info = await self._client().system.info()
            swarm = info.get("Swarm") or {}
            if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
                raise RuntimeFailure("the Docker Engine is not a swarm manager: run "
                                     "`docker swarm init` (or point GREENROOM_DOCKER_URL at a "
                                     "manager)")
            self._local_node = str(swarm.get("NodeID") or "")
        return self._local_node

    async def _service(self, ref: str) -> dict[str, Any] | None:
        found = None
        async with _engine(f"inspect service {ref[:40]}", allow=(404,)):
            found = dict(await self._client().services.inspect(ref))
        return found

    async def _task(self, ref: str) -> dict[str, Any] | None:
        found = None
        async with _engine(f"inspect task {ref[:12]}", allow=(404,)):
            found = dict(await self._client().tasks.inspect(ref))
        return found

    async def _tasks(self, service_ids: list[str]) -> list[dict[str, Any]]:
        if not service_ids:
            return []
        async with _engine("list tasks"):
            found = await self._client().tasks.list(filters={"service": service_ids})
        return [dict(t) for t in found]

    async def _update(self, service: dict[str, Any], spec: dict[str, Any]) -> None:
        """POST a changed spec at the service's version (aiodocker's `services.update`
        only changes the image, so the Engine's update endpoint is called directly)."""
        version = str(service["Version"]["Index"])
        async with _engine(f"update service {service['Spec']['Name']}"):
            await self._client()._query_json(
                f"services/{service['ID']}/update", method="POST", data=json.dumps(spec),
                params={"version": version})

    async def _delete(self, service_id: str) -> None:
        async with _engine(f"remove service {service_id[:12]}", allow=(404,)):
            await self._client().services.delete(service_id)
        log.info("service_removed", id=service_id[:12])

    async def _node(self, node_id: str) -> tuple[str, str]:
        """(address, hostname) of a node: the address replicas on it are reached at."""
        if node_id not in self._node_addr:
            async with _engine(f"inspect node {node_id[:12]}"):
                node = await self._client().nodes.inspect(node_id=node_id)
            addr = str((node.get("Status") or {}).get("Addr") or "")
            if addr in ("", "0.0.0.0"):  # a manager may report its listen address only
                manager = str((node.get("ManagerStatus") or {}).get("Addr") or "")
                addr = manager.rsplit(":", 1)[0] or "127.0.0.1"
            hostname = str((node.get("Description") or {}).get("Hostname") or node_id[:12])
            self._node_addr[node_id] = (addr, hostname)
        return self._node_addr[node_id]

    @asynccontextmanager
    async def _serialised(self, name: str) -> AsyncIterator[None]:
        """One update of a service at a time from this process (others retry on conflict)."""
        lock = self._service_locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt()` again while the service's version moved under it."""
        for tries in range(UPDATE_ATTEMPTS):
            try:
                return await attempt()
            except RuntimeFailure as exc:
                if "out of sequence" not in str(exc) or tries == UPDATE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (tries + 1))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ start

    async def start(self, spec: ReplicaSpec) -> StartedReplica:
        """Add one task to the generation's service (creating it), or take over Swarm's
        restart of the crashed replica `spec.replaces`; returns once the task runs."""
        await self._local_node_id()
        await self.engine_cpus()
        await self._ensure_network()
        name = service_name(spec.model_id, spec.generation)
        async with self._serialised(name):
            placed = None
            if spec.replaces:
                placed = await self._retrying(lambda: self._adopt(spec, name))
            if placed is None:
                placed = await self._retrying(lambda: self._add_slot(spec, name))
        service_id, slot, earlier = placed
        try:
            task = await self._wait_running(service_id, slot, earlier, name)
        except RuntimeFailure:
            with contextlib.suppress(RuntimeFailure):
                await self._drop_slots(service_id, {slot})
            raise
        started = StartedReplica(runtime_ref=str(task["ID"]),
                                 endpoint=await self._endpoint_of(task))
        async with self._serialised(name):
            await self._retrying(lambda: self._record_task(service_id, slot, spec, task))
        log.info("swarm_task_started", service=name, slot=slot, task=started.runtime_ref[:12],
                 endpoint=started.endpoint)
        return started

    async def _add_slot(self, spec: ReplicaSpec, name: str) -> tuple[str, int, set[str]]:
        """Create the service, or raise its replicas by one; (service id, the new slot, ids
        of the tasks that were there before)."""
        service = await self._service(name)
        if service is None:
            body = self.service_spec(spec)
            try:
                async with _engine(f"create service {name}"):
                    created = await self._client()._query_json(
                        "services/create", method="POST", data=json.dumps(body))
            except RuntimeFailure as exc:
                cause = exc.__cause__
                if isinstance(cause, aiodocker.DockerError) and cause.status == 409:
                    raise RuntimeFailure("update out of sequence (created meanwhile)") from exc
                raise
            log.info("service_created", service=name, id=str(created["ID"])[:12])
            return str(created["ID"]), 1, set()
        tasks = await self._tasks([service["ID"]])
        live = live_slots(tasks)
        # Swarm puts a new task in the lowest slot that has no live (or restarting) task.
        slot = next(n for n in range(1, len(live) + 2) if n not in live)
        body = service["Spec"]
        body["Labels"] = {**_owned_slots(body.get("Labels") or {}, live),
                          _slot_label(slot): str(spec.replica_id)}
        body["Mode"] = {"Replicated": {"Replicas": len(live) + 1}}
        await self._update(service, body)
        return str(service["ID"]), slot, {str(t["ID"]) for t in tasks}

    async def _record_task(self, service_id: str, slot: int, spec: ReplicaSpec,
                           task: dict[str, Any]) -> None:
        """The slot's owner label gains the task it runs as (`<replica id>/<task id>`): a
        later task in the slot is then known as Swarm's restart of it."""
        service = await self._service(service_id)
        if service is None:
            return
        body = service["Spec"]
        labels = body.get("Labels") or {}
        if _owner(labels, slot)[0] != spec.replica_id:
            return  # the slot was given up meanwhile
        body["Labels"] = {**labels, _slot_label(slot): f"{spec.replica_id}/{task['ID']}"}
        await self._update(service, body)

    async def _adopt(self, spec: ReplicaSpec, name: str) -> tuple[str, int, set[str]] | None:
        """Make `spec` the owner of the slot whose task `spec.replaces` died, when Swarm
        restarts that slot (a crash, a drained node); None when it does not."""
        assert spec.replaces is not None
        dead = await self._task(spec.replaces)
        service = await self._service(name)
        if dead is None or service is None or dead.get("ServiceID") != service["ID"]:
            return None
        slot = int(dead.get("Slot") or 0)
        deadline = time.monotonic() + ADOPT_WAIT_S
        shutdown_since: float | None = None
        while True:
            mine = [t for t in await self._tasks([service["ID"]]) if t.get("Slot") == slot]
            restarted = [t for t in mine if _version(t) > _version(dead) and not _dead(t)]
            if restarted:
                break
            seen = next((t for t in mine if t["ID"] == dead["ID"]), dead)
            # Told to shut down and still nothing newer after a grace: Swarm is not
            # restarting this slot (a scale-down). The grace covers a drained node, whose
            # tasks are told to shut down a moment before their restarts are created.
            now = time.monotonic()
            if seen.get("DesiredState") == "shutdown":
                shutdown_since = now if shutdown_since is None else shutdown_since
            if (shutdown_since is not None and now - shutdown_since > SHUTDOWN_GRACE_S) \
                    or now > deadline:
                return None
            await asyncio.sleep(POLL_S)
        body = service["Spec"]
        body["Labels"] = {**(body.get("Labels") or {}), _slot_label(slot): str(spec.replica_id)}
        await self._update(service, body)
        log.info("swarm_slot_adopted", service=name, slot=slot, replaces=spec.replaces[:12])
        return str(service["ID"]), slot, {str(t["ID"]) for t in mine if t not in restarted}

    async def _wait_running(self, service_id: str, slot: int, earlier: set[str],
                            name: str) -> dict[str, Any]:
        """The slot's new task once it runs with a published port; raise if it dies."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            tasks = [t for t in await self._tasks([service_id])
                     if t.get("Slot") == slot and str(t["ID"]) not in earlier]
            task = latest_per_slot(tasks).get(slot)
            if task is not None and _state(task) == "running" and _published_port(task):
                return task
            if task is not None and _state(task) in TERMINAL:
                raise await self._task_died(task, name)
            await asyncio.sleep(POLL_S)
        raise RuntimeFailure(f"task {slot} of service {name} was not running after "
                             f"{START_TIMEOUT_S:g}s")

    async def _task_died(self, task: dict[str, Any], name: str) -> RuntimeFailure:
        info = await self._task_info(task, {})
        stderr = ""
        with contextlib.suppress(RuntimeFailure):
            _, stderr = await self.logs(str(task["ID"]), tail=20)
        message = f"task {task.get('Slot')} of service {name} {info.describe_exit()} at start"
        return RuntimeFailure(f"{message}:\n{stderr.strip()}" if stderr.strip() else message)

    # ------------------------------------------------------------ reading tasks

    async def _endpoint_of(self, task: dict[str, Any]) -> str:
        addr, _ = await self._node(str(task.get("NodeID") or ""))
        return f"http://{addr}:{_published_port(task)}"

    async def _task_info(self, task: dict[str, Any], service_labels: dict[str, str]) -> ReplicaInfo:
        labels = service_labels if LABEL_MODEL in service_labels else \
            ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
        replica_id, _ = _owner(service_labels, int(task.get("Slot") or 0))
        status = task.get("Status") or {}
        running = not _dead(task)
        endpoint = None
        if _state(task) == "running" and _published_port(task):
            endpoint = await self._endpoint_of(task)
        exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
        return ReplicaInfo(
            runtime_ref=str(task["ID"]), replica_id=replica_id,
            model_id=UUID(labels[LABEL_MODEL]), generation=int(labels[LABEL_GENERATION]),
            running=running,
            exit_code=None if running or exit_code is None else int(exit_code),
            oom_killed=False if running else await self._oom_killed(task),
            endpoint=endpoint,
            error=None if running else await self._error(task),
        )

    async def _oom_killed(self, task: dict[str, Any]) -> bool:
        """Swarm's task status has no OOM flag: ask the container, when it is on this node."""
        container = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
        if not container or task.get("NodeID") != await self._local_node_id():
            return False
        with contextlib.suppress(RuntimeFailure):
            data = await self._show(str(container))
            return bool(((data or {}).get("State") or {}).get("OOMKilled"))
        return False

    async def _error(self, task: dict[str, Any]) -> str | None:
        """A readable reason for a task that never ran its server (None: it exited)."""
        state = _state(task)
        err = str((task.get("Status") or {}).get("Err") or "")
        if state == "rejected" or (state == "failed" and "non-zero exit" not in err and err):
            _, host = await self._node(str(task.get("NodeID") or "")) if task.get("NodeID") \
                else ("", "no node")
            if "bind source path does not exist" in err:
                path = err.rsplit(":", 1)[-1].strip()
                return f"could not start on node {host}: model directory {path} is not there"
            if "No such image" in err or ("image" in err.lower() and "not found" in err):
                return f"could not start on node {host}: {err} ({BUILD_HINT} on every node)"
            return f"could not start on node {host}: {err}"
        if state in ("shutdown", "orphaned", "remove") or (
                state not in TERMINAL and task.get("DesiredState") == "shutdown"):
            return "was shut down by the swarm (its node was drained or left)"
        return None

    async def inspect(self, runtime_ref: str) -> ReplicaInfo | None:
        task = await self._task(runtime_ref)
        if task is None:
            return None
        service = await self._service(str(task.get("ServiceID") or ""))
        labels = ((service or {}).get("Spec") or {}).get("Labels") or {}
        if LABEL_RUNTIME not in (((task.get("Spec") or {}).get("ContainerSpec") or {})
                                 .get("Labels") or {}):
            raise RuntimeFailure(f"task {runtime_ref[:12]} is not a Greenroom replica")
        return await self._task_info(task, labels)

    async def logs(self, runtime_ref: str, tail: int = 100) -> tuple[str, str]:
        """The task's stdout and stderr, through the manager from whichever node ran it."""
        out: list[str] = []
        err: list[str] = []
        for stream, into in (("stdout", out), ("stderr", err)):
            async with _engine(f"logs of task {runtime_ref[:12]}",
                               missing=f"task {runtime_ref[:12]} is gone; no logs"), \
                    self._client()._query(f"tasks/{runtime_ref}/logs",
                                          params={stream: True, "tail": str(max(tail, 0))}) \
                    as response:
                into += await multiplexed_result_list(response)  # type: ignore[no-untyped-call]
        return _tail(out, tail), _tail(err, tail)

    async def _services(self) -> list[dict[str, Any]]:
        filters = {"label": [*self.own_filters(), f"{LABEL_RUNTIME}={self.name}"]}
        async with _engine("list services"):
            return [dict(s) for s in await self._client().services.list(filters=filters)]

    async def list(self) -> list[ReplicaInfo]:
        """The newest task of each slot of every service of this installation; a service
        with no task at all is listed once, as `service:<id>`, so it can be removed."""
        ids = [str(s["ID"]) for s in await self._services()]
        tasks = await self._tasks(ids)
        # Labels read after the tasks: a slot added meanwhile has its owner by now (a
        # start labels the slot in the same update that makes its task).
        services = {s["ID"]: s for s in await self._services()}
        by_service: dict[str, list[dict[str, Any]]] = {sid: [] for sid in services}
        for task in tasks:
            by_service.setdefault(str(task.get("ServiceID")), []).append(task)
        found: list[ReplicaInfo] = []
        for sid, mine in by_service.items():
            service = services.get(sid)
            if service is None:
                continue
            labels = service["Spec"].get("Labels") or {}
            slots = {slot: task for slot, task in latest_per_slot(mine).items()
                     if not _awaiting_takeover(task, labels)}
            with contextlib.suppress(KeyError, ValueError):
                if not slots and sid in ids:
                    found.append(_bare_service(service))
                for task in slots.values():
                    found.append(await self._task_info(task, labels))
        return found

    # ------------------------------------------------------------ stopping

    async def remove_many(self, runtime_refs: builtins.list[str], grace_s: float) -> None:
        """Remove these replicas. When they hold every slot of their service that still
        runs or restarts (a generation going away) the service is deleted; else each one
        that is its slot's running task is stopped and `replicas` lowered to what is left
        (a scale-down). A crashed replica's slot is left to Swarm's restart, which its
        replacement takes over (`start` with `replaces`)."""
        wanted: dict[str, list[dict[str, Any]]] = {}
        for ref in runtime_refs:
            if ref.startswith(SERVICE_REF_PREFIX):
                wanted.setdefault(ref.removeprefix(SERVICE_REF_PREFIX), [])
                continue
            task = await self._task(ref)
            if task is not None:
                wanted.setdefault(str(task["ServiceID"]), []).append(task)
        for service_id, tasks in wanted.items():
            await self._remove_tasks(service_id, tasks, grace_s)

    async def _remove_tasks(self, service_id: str, leaving: builtins.list[dict[str, Any]],
                            grace_s: float) -> None:
        service = await self._service(service_id)
        if service is None:
            return
        latest = latest_per_slot(await self._tasks([service_id]))
        live = {slot for slot, task in latest.items() if not _dead(task)}
        if live <= {int(t.get("Slot") or 0) for t in leaving}:
            await self._delete(service_id)
            return
        running = [latest[slot] for t in leaving
                   if (slot := int(t.get("Slot") or 0)) in live and latest[slot]["ID"] == t["ID"]]
        if not running:
            return
        await asyncio.gather(*(self._stop_task(t, grace_s) for t in running))
        async with self._serialised(service["Spec"]["Name"]):
            await self._drop_slots(service_id, {int(t["Slot"]) for t in running})

    async def _stop_task(self, task: dict[str, Any], grace_s: float) -> None:
        """Stop one task's container; possible only on the node this worker's engine is."""
        container = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
        if task.get("NodeID") != await self._local_node_id() or not container:
            _, host = await self._node(str(task.get("NodeID") or ""))
            raise RuntimeFailure(f"task {str(task['ID'])[:12]} runs on node {host}: one task "
                                 "of a service can only be stopped on the worker's own node")
        grace = max(0, math.ceil(grace_s))
        async with _engine(f"stop task {str(task['ID'])[:12]}", grace + 30, allow=(404,)):
            await self._client().containers.container(str(container)).stop(t=grace)
        # Wait (briefly) until Swarm records the task as ended, so the replica count
        # below does not count it live and refill its slot.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = await self._task(str(task["ID"]))
            if seen is None or _state(seen) in TERMINAL:
                return
            await asyncio.sleep(POLL_S)

    async def _drop_slots(self, service_id: str, slots: set[int]) -> None:
        """Forget `slots`: `replicas` becomes the live tasks left; no live task: delete."""

        async def attempt() -> None:
            service = await self._service(service_id)
            if service is None:
                return
            live = live_slots(await self._tasks([service_id])) - slots
            if not live:
                await self._delete(service_id)
                return
            body = service["Spec"]
            body["Labels"] = _owned_slots(body.get("Labels") or {}, live)
            body["Mode"] = {"Replicated": {"Replicas": len(live)}}
            await self._update(service, body)

        await self._retrying(attempt)

    async def stop(self, runtime_ref: str, grace_s: float) -> None:
        """Stop one task (the last of its service: the service goes)."""
        await self.remove_many([runtime_ref], grace_s)

    async def remove(self, runtime_ref: str) -> None:
        await self.remove_many([runtime_ref], 0)

    # ------------------------------------------------------------ capacity

    async def engine_memory_mb(self) -> int:
        """Memory of the swarm's ready, active nodes, for the worker's capacity budget."""
        async with _engine("list nodes"):
            nodes = await self._client().nodes.list()
        total = 0
        for node in nodes:
            if (node.get("Status") or {}).get("State") == "ready" and \
                    (node.get("Spec") or {}).get("Availability") == "active":
                total += int(((node.get("Description") or {}).get("Resources") or {})
                             .get("MemoryBytes") or 0)
        return total // 2**20


def _created_s(task: dict[str, Any]) -> float:
    """The task's CreatedAt as a UNIX time (the Engine writes nanoseconds; seconds do)."""
    stamp = str(task.get("CreatedAt") or "")[:19]
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


def _owner(labels: dict[str, str], slot: int) -> tuple[UUID, str | None]:
    """(replica id, task id once known) owning `slot`; the nil UUID when none does (a
    task no replica owns is an orphan to the reconciler)."""
    replica, _, task = labels.get(_slot_label(slot), "").partition("/")
    try:
        return UUID(replica), task or None
    except ValueError:
        return UUID(int=0), None


def _awaiting_takeover(task: dict[str, Any], labels: dict[str, str]) -> bool:
    """A young task Swarm restarted in place of the one its slot's owner ran: the crashed
    replica's replacement may be taking it over right now."""
    _, owned = _owner(labels, int(task.get("Slot") or 0))
    return (owned is not None and owned != task["ID"] and not _dead(task)
            and time.time() - _created_s(task) < ADOPT_GRACE_S)


def _owned_slots(labels: dict[str, str], keep: set[int]) -> dict[str, str]:
    """The service's labels with slot owners only for `keep`."""
    return {k: v for k, v in labels.items()
            if not k.startswith(LABEL_SLOT_PREFIX)
            or (k.removeprefix(LABEL_SLOT_PREFIX).isdigit()
                and int(k.removeprefix(LABEL_SLOT_PREFIX)) in keep)}


def _bare_service(service: dict[str, Any]) -> ReplicaInfo:
    labels = service["Spec"].get("Labels") or {}
    replica_id, _ = _owner(labels, 1)
    return ReplicaInfo(runtime_ref=SERVICE_REF_PREFIX + str(service["ID"]),
                       replica_id=replica_id, model_id=UUID(labels[LABEL_MODEL]),
                       generation=int(labels[LABEL_GENERATION]), running=False)
