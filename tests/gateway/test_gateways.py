"""The gateway as its own process, several at once: zero-failure redeploys under load,
an atomic switch on every gateway, a drain that waits for in-flight requests on all of
them, and private models' access (cached, yet a revoked key stops within a second).

The first two run on each engine: the Python gateway, and HAProxy programmed by
Greenroom (`--engine haproxy`, skipped where haproxy is not installed), whose in-flight
counts are HAProxy's own `scur` per replica."""

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from redis.asyncio import Redis

from db import deployments, replicas
from gateway.haproxy.controller import find_haproxy
from schemas.queue import ROUTES_CHANNEL
from schemas.settings import Settings
from tests.conftest import Proc, start_gateway, wait_task
from tests.gateway.test_tei_contract import serve_replica
from tests.model_server.conftest import poll_health, start_server
from tests.support.accounts import call, make_user
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)
from tests.support.load import Load, run_load
from worker.drain import gateway_reports, wait_drained
from worker.runtimes.process import free_port

RATE_EACH = 30  # two gateways: 60 requests per second in all
DURATION_S = 22
CONCURRENCY = 16
NO_HAPROXY = pytest.mark.skipif(find_haproxy(Settings()) is None,
                                reason="haproxy is not installed (apt-get install haproxy)")
ENGINES = [pytest.param("python"), pytest.param("haproxy", marks=NO_HAPROXY)]


async def start_engine(spawn: Callable[..., Proc], http: aiohttp.ClientSession,
                       engine: str) -> str:
    """A gateway on `engine`; HAProxy's with a small slot pool (it declares them all)."""
    if engine == "haproxy":
        return await start_gateway(spawn, http, gateway_engine="haproxy", haproxy_slots=8)
    return await start_gateway(spawn, http)


def reports_per_gateway(engine: str) -> int:
    """Reports each gateway writes: HAProxy's controller's, and its Python gateway's."""
    return 2 if engine == "haproxy" else 1


async def _deploy(http: aiohttp.ClientSession, api: str, ref: str) -> dict[str, Any]:
    async with http.post(f"{api}/deploy", json={"embedding_model_id": ref}) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    return await wait_task(http, api, "deploy", task["task_id"])


async def _by_generation(pool: asyncpg.Pool, load: Load) -> Counter[int]:
    served = Counter[int]()
    for row in await replicas.get_many(pool, [UUID(r) for r in load.replicas]):
        served[row.generation] += load.replicas[str(row.id)]
    return served


@pytest.mark.slow
@pytest.mark.serial  # paced load: asserts the rate it reached and that no request timed out
@pytest.mark.timeout(240)
@pytest.mark.parametrize("engine", ENGINES)
async def test_redeploys_under_load_through_two_gateways_drop_no_request(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, engine: str) -> None:
    """Process runtime: 60 req/s for 22 s over two gateway processes, two redeploys."""
    model_id = await hashing_model("two-gateways")
    spawn("worker")
    gateways = [await start_engine(spawn, http, engine), await start_engine(spawn, http, engine)]
    assert (await _deploy(http, api, "alice/two-gateways"))["status"] == "done"
    loads = [asyncio.create_task(run_load(f"{g}/serve/two-gateways/embed", RATE_EACH,
                                          DURATION_S, CONCURRENCY)) for g in gateways]
    rollouts = []
    for pause in (3.0, 2.0):
        await asyncio.sleep(pause)
        rollouts.append(await _deploy(http, api, "alice/two-gateways"))
    assert not any(t.done() for t in loads), "the load ended before the rollouts did"
    results = [await t for t in loads]

    assert [r["status"] for r in rollouts] == ["done", "done"], rollouts
    sent = sum(load.sent for load in results)
    elapsed = max(load.elapsed_s for load in results)
    for gateway, load in zip(gateways, results, strict=True):
        assert load.failures == [], f"{gateway}: {len(load.failures)} of {load.sent} failed: " \
                                    f"{load.failures[:5]}"
        served = await _by_generation(pool, load)
        assert set(served) == {1, 2, 3}, (gateway, served)
    assert elapsed >= 20 and sent / elapsed >= 50
    deployment = await deployments.get(pool, model_id)
    assert deployment is not None and deployment.active_generation == 3
    print(f"\ntwo {engine} gateways: {sent} requests in {elapsed:.1f}s ({sent / elapsed:.0f}/s), "
          f"0 failed, generations 1, 2, 3 answered through each")


class HeldReplica:
    """A stand-in replica (a fake model server, this test's own) whose /embed answers only
    when the test releases that request, so requests stay in flight as long as wanted."""

    def __init__(self) -> None:
        self.arrived: list[asyncio.Future[None]] = []
        self.url = ""

    async def embed(self, request: web.Request) -> web.Response:
        release = asyncio.get_running_loop().create_future()
        self.arrived.append(release)
        await release
        return web.json_response([[1.0, 0.0]])

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


@contextlib.asynccontextmanager
async def held_replica() -> AsyncIterator[HeldReplica]:
    replica = HeldReplica()
    app = web.Application()
    app.router.add_post("/embed", replica.embed)
    app.router.add_get("/health", replica.health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    replica.url = f"http://127.0.0.1:{port}"
    try:
        yield replica
    finally:
        for release in replica.arrived:
            if not release.done():
                release.set_result(None)
        await runner.cleanup()


async def _answered_by(http: aiohttp.ClientSession, gateway: str, name: str) -> str:
    async with http.post(f"{gateway}/serve/{name}/embed", json={"inputs": "x"}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Greenroom-Replica"]


async def _both_report(redis: Redis, model_id: str, generation: int, count: int) -> None:
    """Until all `count` reports route the model to `generation` (they report on reload)."""
    deadline = time.monotonic() + 10
    while True:
        reports = await gateway_reports(redis)
        if len(reports) == count and all(r.generations.get(model_id) == generation
                                     for r in reports):
            return
        assert time.monotonic() < deadline, reports
        await asyncio.sleep(0.02)


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ENGINES)
async def test_two_gateways_switch_together_and_the_drain_waits_for_both(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        settings: Settings, hashing_model: Any, clean: None, tmp_path: Path,
        engine: str) -> None:
    name = "held"
    reporting = 2 * reports_per_gateway(engine)
    model_id = await hashing_model(name)
    new_server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing",
                              MODEL_SERVER_DIMENSION="8")
    redis = Redis.from_url(settings.require_redis_url())
    try:
        async with held_replica() as old:
            old_id = await serve_replica(pool, model_id, name, old.url)
            gateways = [await start_engine(spawn, http, engine),
                        await start_engine(spawn, http, engine)]
            await poll_health(http, new_server)
            # One request in flight to the old replica through each gateway.
            pending = []
            for count, gateway in enumerate(gateways, start=1):
                pending.append(asyncio.create_task(_answered_by(http, gateway, name)))
                await _until(lambda c=count: len(old.arrived) == c, 10, "request not held")

            # The switch, as a rollout makes it: one transaction, then the message.
            new_id = await serve_replica(pool, model_id, name, new_server.url)
            await redis.publish(ROUTES_CHANNEL, str(model_id))
            drained = asyncio.create_task(wait_drained(redis, model_id, 2, [old_id], 20))
            await _both_report(redis, str(model_id), 2, reporting)
            for gateway in gateways:  # each gateway now sends every new request to gen 2
                answers = {await _answered_by(http, gateway, name) for _ in range(5)}
                assert answers == {str(new_id)}, (gateway, answers)

            await asyncio.sleep(1.5)
            reports = await gateway_reports(redis)
            assert len(reports) == reporting
            assert all(r.generations[str(model_id)] == 2 for r in reports)
            held = [0] * (reporting - 2) + [1, 1]  # HAProxy's own reports carry them (scur)
            assert sorted(r.inflight.get(str(old_id), 0) for r in reports) == held, reports
            assert not drained.done(), "the drain ended with two requests in flight"
            old.arrived[0].set_result(None)
            assert await pending[0] == str(old_id)
            await asyncio.sleep(1.5)
            assert not drained.done(), "the drain ended with one request in flight"
            old.arrived[1].set_result(None)
            assert await pending[1] == str(old_id)
            assert await asyncio.wait_for(drained, 5) is True
    finally:
        new_server.stop()
        await redis.aclose()


async def test_private_model_access_is_cached_yet_a_revoke_stops_it_within_a_second(
        api: str, gateway: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, tmp_path: Path) -> None:
    http = anon_http  # each request carries only the headers it names
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    model_id = await hashing_model("secret")
    await pool.execute("UPDATE models SET access_level = 'private' WHERE id = $1", model_id)
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8")
    try:
        await poll_health(http, server)
        await serve_replica(pool, model_id, "secret", server.url)
        status, key = await call(http, "POST", f"{api}/api/v2/auth/api-keys", headers=alice,
                                 json={"name": "gateway"})
        assert status == 201
        with_key = {"Authorization": f"Bearer {key['key']}"}
        url = f"{gateway}/serve/secret/embed"

        async def status_of(headers: dict[str, str]) -> int:
            async with http.post(url, json={"inputs": "x"}, headers=headers) as resp:
                await resp.read()
                return resp.status

        await _until_status(status_of, with_key, 200, 10)  # once the gateway has the route
        # Without a token, or with one that cannot read it: as a missing deployment (L1).
        assert await status_of({}) == 404
        assert await status_of(bob) == 404
        assert [await status_of(with_key) for _ in range(20)] == [200] * 20

        me = f"{api}/api/v2/users/me"
        assert (await call(http, "GET", me, headers=with_key))[0] == 200  # cached by the API
        status, _ = await call(http, "DELETE", f"{api}/api/v2/auth/api-keys/{key['id']}",
                               headers=alice)
        assert status == 200
        revoked_at = time.monotonic()
        assert (await call(http, "GET", me, headers=with_key))[0] == 401
        await _until_status(status_of, with_key, 401, 1.0)
        print(f"\nrevoked key refused by the gateway after "
              f"{(time.monotonic() - revoked_at) * 1000:.0f} ms")

        status, _ = await call(http, "PUT", f"{api}/api/v2/models/{model_id}/permissions",
                               headers=alice, json={"username": "bob", "permission": "read"})
        assert status == 200
        await _until_status(status_of, bob, 200, 1.0)
    finally:
        server.stop()


async def _until_status(status_of: Any, headers: dict[str, str], want: int,
                        timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    got = None
    while time.monotonic() < deadline:
        got = await status_of(headers)
        if got == want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still {got}, not {want}, after {timeout_s}s")
