"""A deployment's `cpus` sizes its replicas' compute threads on every runtime (the process
runtime has no CPU quota for the model server to read; before, each process replica ran
one thread per host CPU beside its neighbours')."""

from uuid import uuid4

from worker.runtimes.base import ReplicaSpec, model_server_env


def _threads(cpus: float | None) -> str | None:
    spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="a/m",
                       generation=1, task_id=None, source={"backend": "hashing"}, cpus=cpus)
    return model_server_env(spec, "127.0.0.1", 9000).get("MODEL_SERVER_NUM_THREADS")


def test_cpus_become_the_replicas_threads_rounded_as_a_quota_is() -> None:
    assert _threads(None) is None  # the server's default: its CPU allowance
    assert _threads(1) == "1"
    assert _threads(0.25) == "1"  # at least one
    assert _threads(2.6) == "3"
    assert _threads(2.4) == "2"


def test_a_deployments_env_cannot_set_the_threads_itself() -> None:
    spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="a/m",
                       generation=1, task_id=None, source={"backend": "hashing"}, cpus=1,
                       env={"MODEL_SERVER_NUM_THREADS": "64"})
    assert model_server_env(spec, "127.0.0.1", 9000)["MODEL_SERVER_NUM_THREADS"] == "1"
