"""`FakeRuntime`: an in-memory `Runtime` (worker/runtimes/base.py), so the worker's decisions
(rollout, scale, repair, the reconciler) have fast tests beside their end-to-end ones.

A FAKE, named as one: no process or container starts. Each replica is a record; its
endpoint is a path on one in-process aiohttp server whose `/health` answers 200 while the
record says the replica is up and healthy (what the worker's readiness check asks:
worker/health.py), and whose `/embed` answers the vectors `vectors` gives (by default the
hashing backend's for the replica's source, what the compatibility gate reads). The test
decides each replica's fate when it starts (`on_start`: healthy, never healthy, exits at
once, refused by the runtime) or later (`crash`), and can plant a replica no row knows
(`plant`). The real runtimes have their own tests
(tests/worker/test_docker_runtime.py, test_swarm_runtime.py, the process runtime's).
"""

from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID, uuid4

import numpy as np
from aiohttp import web

from model_server.backends import HashingEmbedder
from worker.runtimes.base import (
    ReplicaInfo,
    ReplicaSpec,
    RuntimeFailure,
    StartedReplica,
    stop_and_remove_each,
)


@dataclass
class FakeReplica:
    """What the fake knows of one replica: its spec and how it behaves."""

    spec: ReplicaSpec
    ref: str
    running: bool = True
    healthy: bool = True
    exit_code: int | None = None
    log: str = ""


# What happens to a replica when it starts: "healthy", "never_ready" (runs, /health never
# answers 200), "exits" (exits at once with code 3), or "refused" (the runtime's start
# raises RuntimeFailure, as an engine refusing a container would).
Fate = str


def hashing_vectors(spec: ReplicaSpec, texts: list[str]) -> list[list[float]]:
    """What a hashing replica of `spec.source` would answer (raw vectors)."""
    dimension = int(spec.source.get("dimension") or 384)
    vectors: list[list[float]] = HashingEmbedder(dimension).embed(texts).vectors.tolist()
    return vectors


class FakeRuntime:
    """An in-memory Runtime; `open()` before use (it serves the replicas' /health)."""

    name = "fake"
    local_host = "127.0.0.1"

    def __init__(self) -> None:
        self.replicas: dict[str, FakeReplica] = {}
        self.removed: list[str] = []
        self.on_start: Callable[[ReplicaSpec], Fate] = lambda spec: "healthy"
        # A replica's answer to /embed (raw vectors); raise to make it answer 500.
        self.vectors: Callable[[ReplicaSpec, list[str]], list[list[float]]] = hashing_vectors
        self._runner: web.AppRunner | None = None
        self._base = ""

    async def open(self) -> None:
        app = web.Application()
        app.router.add_get("/{ref}/health", self._health)
        app.router.add_post("/{ref}/embed", self._embed)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self._base = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        replica = self.replicas.get(request.match_info["ref"])
        up = replica is not None and replica.running and replica.healthy
        return web.Response(status=200 if up else 503)

    async def _embed(self, request: web.Request) -> web.Response:
        replica = self.replicas.get(request.match_info["ref"])
        if replica is None or not replica.running:
            return web.Response(status=503)
        body = await request.json()
        inputs = body["inputs"]
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        try:
            vectors = self.vectors(replica.spec, texts)
        except Exception as exc:
            return web.json_response({"error": str(exc)}, status=500)
        normalize = body.get("normalize", True)
        rows = np.asarray(vectors, dtype=np.float32)
        if normalize:
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
        return web.json_response(rows.tolist())

    # What a test reads and does.

    def running(self, model_id: UUID | None = None, generation: int | None = None
                ) -> list[FakeReplica]:
        return [r for r in self.replicas.values() if r.running
                and (model_id is None or r.spec.model_id == model_id)
                and (generation is None or r.spec.generation == generation)]

    def crash(self, ref: str, exit_code: int = 137) -> None:
        """The replica's process dies (137: SIGKILL, as the kernel's OOM killer sends)."""
        self.replicas[ref].running = False
        self.replicas[ref].exit_code = exit_code

    def plant(self, model_id: UUID, generation: int, replica_id: UUID | None = None) -> str:
        """A running replica that the runtime holds but no task is making (an orphan when
        no row, or a finished row, or an old generation's row, owns it)."""
        spec = ReplicaSpec(replica_id=replica_id or uuid4(), model_id=model_id,
                           model_identifier="planted", generation=generation, task_id=None,
                           source={"backend": "hashing", "dimension": 8})
        ref = f"fake-{spec.replica_id}"
        self.replicas[ref] = FakeReplica(spec, ref)
        return ref

    # The Runtime protocol.

    async def start(self, spec: ReplicaSpec) -> StartedReplica:
        fate = self.on_start(spec)
        if fate == "refused":
            raise RuntimeFailure("the fake runtime refused the replica")
        ref = f"fake-{spec.replica_id}"
        replica = FakeReplica(spec, ref, healthy=fate == "healthy",
                              log=f"replica {spec.replica_id} of generation {spec.generation}")
        if fate == "exits":
            replica.running, replica.exit_code = False, 3
            replica.log += "\nTraceback: the model failed to load"
        self.replicas[ref] = replica
        return StartedReplica(runtime_ref=ref, endpoint=f"{self._base}/{ref}")

    async def inspect(self, runtime_ref: str) -> ReplicaInfo | None:
        replica = self.replicas.get(runtime_ref)
        return None if replica is None else self._info(replica)

    async def stop(self, runtime_ref: str, grace_s: float) -> None:
        if runtime_ref in self.replicas:
            self.replicas[runtime_ref].running = False

    async def remove(self, runtime_ref: str) -> None:
        if self.replicas.pop(runtime_ref, None) is not None:
            self.removed.append(runtime_ref)

    async def logs(self, runtime_ref: str, tail: int = 100) -> tuple[str, str]:
        replica = self.replicas.get(runtime_ref)
        return ("", "\n".join(replica.log.splitlines()[-tail:]) if replica else "")

    async def remove_many(self, runtime_refs: list[str], grace_s: float) -> None:
        await stop_and_remove_each(self, runtime_refs, grace_s)

    async def list(self) -> list[ReplicaInfo]:
        return [self._info(r) for r in self.replicas.values()]

    def _info(self, replica: FakeReplica) -> ReplicaInfo:
        return ReplicaInfo(runtime_ref=replica.ref, replica_id=replica.spec.replica_id,
                           model_id=replica.spec.model_id, generation=replica.spec.generation,
                           running=replica.running, exit_code=replica.exit_code,
                           endpoint=f"{self._base}/{replica.ref}")
