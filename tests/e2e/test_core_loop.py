"""Issue 4, must-show 2: deploy → serve → redeploy → delete, end to end on real processes."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from db import replicas
from schemas.settings import Settings
from tests.conftest import Proc, wait_task
from tests.support import services
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from worker.runtimes.process import ProcessRuntime

ROLLOUT_PHASES = {"starting_replicas", "health_checking", "switching", "draining", "removing"}


async def _embed(http: aiohttp.ClientSession, base: str, model: str) -> tuple[int, Any, str]:
    async with http.post(f"{base}/v1/embeddings", json={"model": model, "input": "hello"}) as r:
        return r.status, await r.json(), r.headers.get("X-Greenroom-Replica", "")


async def _deploy(http: aiohttp.ClientSession, base: str, model: str) -> dict[str, Any]:
    async with http.post(f"{base}/deploy", json={"embedding_model_id": model}) as resp:
        assert resp.status == 202
        task = await resp.json()
    assert task["status"] == "pending"
    return await wait_task(http, base, "deploy", task["task_id"])


def _model_server_pids(state_dir: Path) -> list[int]:
    return list(services.replica_processes(state_dir))


async def test_deploy_serve_redeploy_delete(api: str, gateway: str, spawn: Callable[..., Proc],
                                            http: aiohttp.ClientSession, pool: asyncpg.Pool,
                                            settings: Settings, hashing_model: Any) -> None:
    model_id = await hashing_model("core-loop")
    spawn("worker")

    first = await _deploy(http, api, "alice/core-loop")
    assert first["status"] == "done", first
    assert first["metadata"]["generation"] == 1
    assert set(first["metadata"]["timings"]) >= ROLLOUT_PHASES
    status, body, replica_1 = await _embed(http, gateway, "core-loop")
    assert status == 200, body
    assert len(body["data"][0]["embedding"]) == 384
    gen1 = [r for r in await replicas.list_for_model(pool, model_id) if r.generation == 1]
    gen1_pids = _model_server_pids(settings.state_dir)
    assert [str(r.id) for r in gen1] == [replica_1] and len(gen1_pids) == 1

    second = await _deploy(http, api, str(model_id))
    assert second["status"] == "done", second
    assert second["metadata"]["generation"] == 2
    status, body, replica_2 = await _embed(http, gateway, "alice/core-loop")
    assert status == 200 and replica_2 != replica_1
    assert not any(Path(f"/proc/{pid}").exists() for pid in gen1_pids), "generation 1 lives"
    live = await replicas.list_for_model(pool, model_id)
    assert {r.generation for r in live} == {2}

    async with http.post(f"{api}/delete", json={"model_id": "alice/core-loop"}) as resp:
        assert resp.status == 202
        deletion = await resp.json()
    done = await wait_task(http, api, "delete", deletion["task_id"])
    assert done["status"] == "done", done
    status, body, _ = await _embed(http, gateway, "core-loop")
    assert status in (404, 503) and body["status_code"] == status and body["message"]
    assert _model_server_pids(settings.state_dir) == []
    assert [r for r in await ProcessRuntime(settings).list() if r.running] == []
