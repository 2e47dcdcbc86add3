"""A deployment's `cpus` sizes a process replica's compute threads (a container reads its
CPU quota itself; a process replica has none, and before ran one thread per host CPU
beside its neighbours')."""

import json
from pathlib import Path
from uuid import uuid4

from schemas.settings import Settings
from worker.runtimes.base import ReplicaSpec, compute_threads
from worker.runtimes.container_spec import container_spec
from worker.runtimes.process import ProcessRuntime


def _spec(cpus: float | None, env: dict[str, str] | None = None) -> ReplicaSpec:
    return ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="test/hash",
                       generation=1, task_id=None, cpus=cpus, env=env or {},
                       source={"backend": "hashing", "dimension": 16})


def test_cpus_become_threads_rounded_as_a_quota_is_and_capped_by_the_host() -> None:
    assert compute_threads(None, 8) is None  # the server's default: its CPU allowance
    assert compute_threads(1, 8) == 1
    assert compute_threads(0.25, 8) == 1  # at least one
    assert compute_threads(2.6, 8) == 3
    assert compute_threads(2.4, 8) == 2
    assert compute_threads(16, 2) == 2  # never more than the host has


async def test_a_process_replica_runs_the_threads_its_cpus_say(settings: Settings) -> None:
    runtime = ProcessRuntime(settings)
    # The deployment's env cannot set them itself (MODEL_SERVER_* are the worker's).
    started = await runtime.start(_spec(1, {"MODEL_SERVER_NUM_THREADS": "64"}))
    try:
        meta = json.loads((settings.state_dir / "replicas" / started.runtime_ref / "meta.json")
                          .read_text())
        environ = Path(f"/proc/{meta['pid']}/environ").read_bytes().split(b"\0")
        assert b"MODEL_SERVER_NUM_THREADS=1" in environ
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()


def test_a_container_reads_its_quota_instead(settings: Settings) -> None:
    spec = container_spec(_spec(1), settings, runtime="docker", own_labels={},
                          network="n", engine_cpus=2)
    assert "MODEL_SERVER_NUM_THREADS" not in spec.env
    assert spec.nano_cpus == 10**9
