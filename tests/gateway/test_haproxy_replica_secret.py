"""Issue 25, review M7 on the HAProxy engine: each slot backend sets its generation's replica
secret on what it passes to a replica, from a map filled only through the admin socket
(against the recording fake admin socket of tests/gateway/test_haproxy_programmer.py; the real
HAProxy checks the configuration there when it is installed)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.haproxy.config import render
from gateway.haproxy.controller import find_haproxy
from gateway.haproxy.programmer import Programmer
from schemas import replica_auth
from schemas.settings import Settings
from tests.conftest import TEST_SECRET_KEY, Proc
from tests.gateway.test_haproxy import _until, start_haproxy
from tests.gateway.test_haproxy_programmer import MODEL, RecordingApi, _layout, _route
from tests.gateway.test_tei_contract import serve_replica
from tests.model_server.conftest import poll_health, start_server
from tests.support.as_admin import admin_anon_http  # noqa: F401  (as the administrator)
from worker.drain import gateway_reports


async def test_each_generation_slot_gets_its_own_secret_before_traffic(tmp_path: Path) -> None:
    api = RecordingApi()
    layout = _layout(tmp_path)
    programmer = Programmer(api, layout, secret_key=TEST_SECRET_KEY)
    first, _ = _route(1, [7001])
    await programmer.apply([first])
    secrets = str(layout.secrets_map)
    one = replica_auth.generation_secret(TEST_SECRET_KEY, MODEL, 1)
    assert api.sent[0] == f"add map {secrets} slot0 {one}", "keyed before any server or name"
    second, _ = _route(2, [7002])
    api.sent.clear()
    await programmer.apply([second])
    two = replica_auth.generation_secret(TEST_SECRET_KEY, MODEL, 2)
    assert api.sent[0] == f"add map {secrets} slot1 {two}"
    assert one != two


def test_every_slot_backend_sets_the_secret_header_from_the_map(tmp_path: Path) -> None:
    layout = _layout(tmp_path, slots=3)
    text = render(layout)
    for slot in ("slot0", "slot1", "slot2"):
        line = (f"http-request set-header {replica_auth.HEADER} "
                f"%[str({slot}),map({layout.secrets_map})]")
        assert line in text, slot


@pytest.mark.skipif(find_haproxy(Settings()) is None, reason="haproxy is not installed")
async def test_haproxy_serves_a_replica_that_refuses_callers_without_its_secret(
        api: str, spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings, hashing_model: Any, tmp_path: Path) -> None:
    """A public model's requests go from HAProxy's slot straight to the replica, which
    answers them (HAProxy sent the secret) and refuses the same request sent directly."""
    model_id = await hashing_model("open")
    secret = replica_auth.generation_secret(TEST_SECRET_KEY, model_id, 1)
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8",
                          **{replica_auth.ENV: secret})
    redis = Redis.from_url(settings.require_redis_url())
    try:
        await poll_health(anon_http, server)
        replica_id = await serve_replica(pool, model_id, "open", server.url)
        assert await pool.fetchval("SELECT active_generation FROM deployments "
                                   "WHERE model_id = $1", model_id) == 1
        base, _ = await start_haproxy(spawn, anon_http)

        async def direct() -> bool:  # HAProxy has the replica as a server of a slot
            return any(str(replica_id) in r.requests for r in await gateway_reports(redis)
                       if r.gateway_id.startswith("haproxy-"))
        await _until(direct, 10, "HAProxy never got the replica as a server")
        for _ in range(3):
            async with anon_http.post(f"{base}/serve/open/embed", json={"inputs": "x"},
                                      headers={replica_auth.HEADER: "forged"}) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Greenroom-Replica"] == str(replica_id)

        async def counted() -> bool:  # HAProxy's own report counts them: served by a slot
            mine = [r for r in await gateway_reports(redis) if r.gateway_id.startswith("haproxy")]
            return bool(mine) and mine[0].requests.get(str(replica_id), 0) >= 3
        await _until(counted, 5, "HAProxy's report never counted the three requests")
        async with anon_http.post(f"{server.url}/embed", json={"inputs": "x"}) as resp:
            assert resp.status == 401
    finally:
        await redis.aclose()
        server.stop()
