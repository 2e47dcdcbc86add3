"""Issue 26 on real processes (API, worker, gateway of either engine, hashing replicas on the
process runtime): a change of source while generation 1 serves does not reach it (a killed
replica's replacement serves generation 1's vectors bit for bit); every answer names its
generation and revision; a rollback inside the warm window is a route flip under paced
load with no failed request."""

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from db import replicas
from gateway.haproxy.controller import find_haproxy
from schemas.settings import Settings
from tests.conftest import Proc, start_gateway, wait_task
from tests.support import services
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.load import Load, run_load
from worker.runtimes.process import free_port

NAME = "revs"
WARM = {"rollout": {"keep_previous_s": 300}, "replicas": 2}
ENGINES = [pytest.param("python"),
           pytest.param("haproxy", marks=pytest.mark.skipif(
               find_haproxy(Settings()) is None, reason="haproxy is not installed"))]


async def _embed(http: aiohttp.ClientSession, gateway: str,
                 text: str = "the same sentence") -> tuple[list[float], dict[str, str]]:
    async with http.post(f"{gateway}/serve/{NAME}/embed", json={"inputs": text}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        return body[0], {k: resp.headers.get(k, "") for k in (
            "X-Greenroom-Replica", "X-Greenroom-Generation", "X-Greenroom-Revision")}


async def _deploy(http: aiohttp.ClientSession, api: str, config: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{api}/deploy", json={"embedding_model_id": f"alice/{NAME}",
                                                "config": config}) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    done = await wait_task(http, api, "deploy", task["task_id"])
    assert done["status"] == "done", (done.get("detail"), done)
    return done


def _kill(settings: Settings, replica_id: UUID) -> None:
    marker = f"GREENROOM_REPLICA_ID={replica_id}".encode()
    pids = [pid for pid, env in services.replica_processes(settings.state_dir).items()
            if marker in env]
    assert len(pids) == 1
    os.killpg(pids[0], signal.SIGKILL)


async def _until(check: Callable[[], Any], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.1)


async def _gateway(engine: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession) -> str:
    if engine == "python":
        return await start_gateway(spawn, http)
    return await start_gateway(spawn, http, gateway_engine="haproxy", haproxy_slots=8,
                               haproxy_stats_port=free_port("127.0.0.1"))


@pytest.mark.serial  # paced load, and the flip's time is asserted
@pytest.mark.parametrize("engine", ENGINES)
async def test_pinned_revision_headers_and_a_rollback_flip_under_load(
        engine: str, api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings, hashing_model: Any) -> None:
    model_id = await hashing_model(NAME)
    spawn("worker")
    gateway = await _gateway(engine, spawn, http)
    async with aiohttp.ClientSession() as anon:  # no token: HAProxy serves a public model itself
        await _flow(engine, api, gateway, http, anon, pool, settings, model_id)


async def _flow(engine: str, api: str, gateway: str, http: aiohttp.ClientSession,
                anon: aiohttp.ClientSession, pool: asyncpg.Pool, settings: Settings,
                model_id: UUID) -> None:
    first = await _deploy(http, api, WARM)
    assert first["metadata"]["revision"] == "r1"
    await _until(lambda: _serves(anon, gateway, "1"), 30, "generation 1 routed")
    v1, headers = await _embed(anon, gateway)
    assert headers["X-Greenroom-Generation"] == "1" and headers["X-Greenroom-Revision"] == "r1"
    assert len(v1) == 384

    # A new source is a new revision; generation 1 keeps its own.
    async with http.patch(f"{api}/api/v2/models/alice/{NAME}",
                          json={"source": {"backend": "hashing", "dimension": 64}}) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(f"{api}/api/v2/models/alice/{NAME}/revisions") as resp:
        listed = await resp.json()
    assert [r["id"] for r in listed] == ["r2", "r1"] and listed[0]["digest"] != listed[1]["digest"]

    # Kill a generation-1 replica: its replacement serves v1's vectors, bit for bit.
    before = {r.id for r in await replicas.list_for_model(pool, model_id)}
    victim = sorted(before)[0]
    _kill(settings, victim)

    async def replaced() -> bool:
        rows = await replicas.list_for_model(pool, model_id)
        return any(r.id not in before and r.state == "ready" for r in rows)
    await _until(replaced, 60, "the repair replaced the killed replica")
    new_id, = [str(r.id) for r in await replicas.list_for_model(pool, model_id)
               if r.id not in before]
    seen: set[str] = set()
    for _ in range(10):  # at once, so least-in-flight spreads them over both replicas
        for vector, headers in await asyncio.gather(*(_embed(anon, gateway)
                                                      for _ in range(16))):
            assert vector == v1, "a generation-1 replica served other vectors"
            assert headers["X-Greenroom-Revision"] == "r1"
            seen.add(headers["X-Greenroom-Replica"])
        if new_id in seen:
            break
    assert new_id in seen, "the replacement never answered"

    # Generation 2 runs revision r2 (64 dimensions: another vector space, which the
    # compatibility gate lets through only as new-space); then roll back under 40 req/s.
    await _deploy(http, api, {**WARM, "rollout": {**WARM["rollout"],
                                                  "compatibility": "new-space"}})
    await _until(lambda: _serves(anon, gateway, "2"), 30, "generation 2 routed")
    v2, headers = await _embed(anon, gateway)
    assert len(v2) == 64 and headers["X-Greenroom-Revision"] == "r2"
    async with http.get(f"{api}/api/v2/deploy/alice/{NAME}/status") as resp:
        status = await resp.json()
    assert (status["generation"], status["revision"], status["warm_generation"]) == (2, "r2", 1)
    async with http.get(f"{api}/api/v2/models/alice/{NAME}/generations") as resp:
        listed = await resp.json()
    assert [(g["generation"], g["revision"], g["state"]) for g in listed] == [
        (2, "r2", "serving"), (1, "r1", "warm")], listed

    stop = asyncio.Event()
    load = Load()
    running = asyncio.create_task(run_load(f"{gateway}/serve/{NAME}/embed", 40, 30, 40,
                                           stop=stop, into=load))
    await asyncio.sleep(1.5)
    async with http.post(f"{api}/api/v2/deploy/alice/{NAME}/rollback") as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    done = await wait_task(http, api, "rollback", task["task_id"])
    assert done["status"] == "done", done
    await _until(lambda: _serves(anon, gateway, "1"), 10, "generation 1 routed again")
    await asyncio.sleep(1.5)
    stop.set()
    await running
    meta = done["metadata"]
    print(f"[{engine}] rollback flip: claim→flipped {meta['claim_to_flipped_ms']} ms "
          f"(limit 100), in the worker {meta['flip_ms']} ms; load: {load.sent} sent, "
          f"{len(load.failures)} failed")
    assert meta["mode"] == "flip" and meta["generation"] == 1
    assert meta["claim_to_flipped_ms"] <= 100, meta
    assert load.sent >= 100 and not load.failures, load.failures[:5]
    vector, headers = await _embed(anon, gateway)
    assert vector == v1 and headers["X-Greenroom-Generation"] == "1"


async def _serves(http: aiohttp.ClientSession, gateway: str, generation: str) -> bool:
    async with http.post(f"{gateway}/serve/{NAME}/embed", json={"inputs": "x"}) as resp:
        return resp.status == 200 and resp.headers.get("X-Greenroom-Generation") == generation
