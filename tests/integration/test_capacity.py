"""Issue 19, must-show 2: a rollout that does not fit the worker's memory budget fails fast
with the figures, the old generation serving; a delete frees the room."""

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import Proc, wait_task
from tests.integration.accounts import call, make_user

BUDGET_MB = 2500


async def _deploy(http: aiohttp.ClientSession, api: str, headers: dict[str, str], ref: str,
                  **config: Any) -> Any:
    status, task = await call(http, "POST", f"{api}/deploy", headers=headers,
                              json={"embedding_model_id": ref, "config": config})
    assert status == 202, task
    async with aiohttp.ClientSession(headers=headers) as authorised:
        return await wait_task(authorised, api, "deploy", task["task_id"], 90)


async def _serving_generation(http: aiohttp.ClientSession, gateway: str, pool: asyncpg.Pool,
                              name: str) -> int:
    """The generation that answers an embedding request through the gateway now."""
    async with http.post(f"{gateway}/serve/{name}/embed", json={"inputs": "still here"}) as resp:
        assert resp.status == 200, await resp.text()
        assert len((await resp.json())[0]) == 384
    generation: int = await pool.fetchval(
        "SELECT active_generation FROM deployments WHERE name = $1", name)
    return generation


async def test_a_rollout_that_does_not_fit_fails_fast_and_a_delete_frees_room(
        api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        anon_http: aiohttp.ClientSession, pool: asyncpg.Pool, hashing_model: Any) -> None:
    _, alice = await make_user(pool, "alice")
    await hashing_model("c1")
    await hashing_model("c2")
    spawn("worker", capacity_memory_mb=BUDGET_MB)
    assert (await _deploy(anon_http, api, alice, "alice/c1", memory=1024))["status"] == "done"
    assert (await _deploy(anon_http, api, alice, "alice/c2", memory=1024))["status"] == "done"
    assert await _serving_generation(http, gateway, pool, "c1") == 1

    # A green redeploy of c1 needs its new 1,024 MB beside the old: 452 MB are left.
    began = time.monotonic()
    failed = await _deploy(anon_http, api, alice, "alice/c1", memory=1024)
    took = time.monotonic() - began
    assert failed["status"] == "failed", failed
    assert failed["detail"] == ("not enough capacity on this worker: needs 1,024 MB, "
                                "452 MB left of 2,500 MB budget"), failed
    print(f"refused in {took:.2f}s: {failed['detail']}")
    assert took < 5, "fails fast, without starting a replica"
    assert await _serving_generation(http, gateway, pool, "c1") == 1, "the old generation serves"
    assert await pool.fetchval("SELECT count(*) FROM replicas WHERE state = 'starting'") == 0

    status, task = await call(anon_http, "POST", f"{api}/delete", headers=alice,
                              json={"embedding_model_id": "alice/c2"})
    assert status == 202
    async with aiohttp.ClientSession(headers=alice) as authorised:
        assert (await wait_task(authorised, api, "delete", task["task_id"]))["status"] == "done"

    done = await _deploy(anon_http, api, alice, "alice/c1", memory=1024)
    assert done["status"] == "done", done
    serving = await _serving_generation(http, gateway, pool, "c1")
    assert serving == done["metadata"]["generation"] > 1
