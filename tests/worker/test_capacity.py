"""Issue 19, must-show 2: a rollout that does not fit the worker's memory budget fails fast
with the figures, the old generation serving; a delete frees the room."""

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import Proc, wait_task
from tests.support.accounts import call, make_user
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)

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


async def test_a_replacement_replica_is_placed_within_the_budget_too(
        api: str, spawn: Callable[..., Proc], pool: asyncpg.Pool,
        anon_http: aiohttp.ClientSession, settings: Any, hashing_model: Any) -> None:
    """Review finding 21: a crashed replica's replacement goes through the capacity check
    (and its lock) like a rollout's replicas. Three 128 MB replicas placed by a worker with
    room; the worker that takes over has a 256 MB budget, which the two still running fill:
    the third crashing is not replaced past the budget, and the refusal says why."""
    import asyncio
    import os
    import signal

    from tests.support import services

    _, alice = await make_user(pool, "alice")
    model_id = await hashing_model("refilled")
    fast = {"lease_s": 2, "reconcile_interval_s": 0.3}
    first = spawn("worker", capacity_memory_mb=1024, **fast)
    done = await _deploy(anon_http, api, alice, "alice/refilled", replicas=3)
    assert done["status"] == "done", done
    first.kill(signal.SIGKILL)
    first.popen.wait()
    spawn("worker", capacity_memory_mb=256, **fast)
    await asyncio.sleep(1.0)  # the new worker's first reconcile pass: all three healthy
    pid = next(iter(services.replica_processes(settings.state_dir)))
    os.kill(pid, signal.SIGKILL)

    messages: list[str] = []
    for _ in range(300):  # at most 30 s
        messages = [r["message"] for r in await pool.fetch(
            "SELECT message FROM deployment_events WHERE model_id = $1 ORDER BY id", model_id)]
        if any("cannot replace" in m or "replaced crashed" in m for m in messages):
            break
        await asyncio.sleep(0.1)
    assert any("not enough capacity on this worker: needs 128 MB, 0 MB left of 256 MB budget"
               in m for m in messages), messages
    assert not any("replaced crashed" in m for m in messages), messages
