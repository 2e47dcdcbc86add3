"""HAProxy as the data plane (`greenroom gateway --engine haproxy`), with real HAProxy,
real model-server replicas, Postgres and Redis: public models go straight to replicas,
private ones through the Python gateway behind it, with the token check exact."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from db import deployments, replicas
from gateway.haproxy.controller import find_haproxy
from gateway.load_signal import JUMP_MIN
from schemas.queue import LOAD_CHANNEL, ROUTES_CHANNEL
from schemas.settings import Settings
from tests.conftest import Proc, start_gateway
from tests.gateway.test_tei_contract import serve_replica
from tests.model_server.conftest import poll_health, start_server
from tests.support.accounts import call, make_user
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)
from worker.drain import gateway_reports
from worker.runtimes.process import free_port

pytestmark = pytest.mark.skipif(find_haproxy(Settings()) is None,
                                reason="haproxy is not installed (apt-get install haproxy)")


async def start_haproxy(spawn: Callable[..., Proc], http: aiohttp.ClientSession,
                        **overrides: Any) -> tuple[str, str]:
    """A `--engine haproxy` gateway; returns its URL and its stats frontend's URL."""
    stats = free_port("127.0.0.1")
    base = await start_gateway(spawn, http, gateway_engine="haproxy", haproxy_stats_port=stats,
                               haproxy_slots=8, **overrides)
    return base, f"http://127.0.0.1:{stats}"


async def _post(http: aiohttp.ClientSession, url: str,
                headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    async with http.post(url, json={"inputs": "x"}, headers=headers or {}) as resp:
        body = await resp.json(content_type=None)
        return resp.status, resp.headers.get("X-Greenroom-Replica", ""), body


async def _until(check: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Seconds until `await check()` is true."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout_s, what
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_public_model_goes_straight_to_its_replica_and_a_private_one_needs_a_token(
        api: str, spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings, hashing_model: Any, clean: None,
        tmp_path: Path) -> None:
    http = anon_http
    _, alice = await make_user(pool, "alice")
    model_id = await hashing_model("open")
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8")
    redis = Redis.from_url(settings.require_redis_url())
    try:
        await poll_health(http, server)
        replica_id = await serve_replica(pool, model_id, "open", server.url)
        base, stats = await start_haproxy(spawn, http)
        url = f"{base}/serve/open/embed"

        async def direct() -> bool:  # HAProxy reports each replica it serves from a slot
            return any(str(replica_id) in r.requests for r in await gateway_reports(redis)
                       if r.gateway_id.startswith("haproxy-"))
        await _until(direct, 10, "HAProxy never got the replica as a server")
        status, replica, body = await _post(http, url)
        assert (status, replica) == (200, str(replica_id)), body
        assert len(body[0]) == 8
        async with http.get(f"{base}/serve/open/info") as resp:
            assert resp.status == 200 and resp.headers["X-Greenroom-Replica"] == str(replica_id)

        # The request went through HAProxy's slot, not the Python gateway: its report counts it.
        async def counted() -> bool:
            mine = [r for r in await gateway_reports(redis) if r.gateway_id.startswith("haproxy")]
            return bool(mine) and mine[0].requests.get(str(replica_id), 0) >= 2
        await _until(counted, 3, "HAProxy's report never counted the two requests")
        reports = {r.gateway_id.startswith("haproxy-"): r for r in await gateway_reports(redis)}
        assert reports[True].generations[str(model_id)] == 1
        assert str(replica_id) not in reports[False].requests, reports

        # The Prometheus exporter on the stats frontend counts the slot's server's requests.
        async with http.get(f"{stats}/metrics") as resp:
            metrics = await resp.text()
        assert resp.status == 200 and "haproxy_server_current_sessions" in metrics
        served = [line for line in metrics.splitlines()
                  if line.startswith('haproxy_server_http_responses_total{proxy="slot')
                  and 'code="2xx"' in line and not line.endswith(" 0")]
        assert served, "no slot server answered 2xx in HAProxy's metrics"

        # Made private: HAProxy stops serving it directly at once; the token check applies,
        # and without a token the deployment answers as a missing one (review L1).
        await pool.execute("UPDATE models SET access_level = 'private' WHERE id = $1", model_id)
        await redis.publish(ROUTES_CHANNEL, str(model_id))

        async def refused() -> bool:
            return (await _post(http, url))[0] == 404
        took = await _until(refused, 1.0, "a private model still served without a token")
        print(f"\nmade private: refused without a token after {took * 1000:.0f} ms")
        status, _, body = await _post(http, url)
        assert status == 404 and body["status_code"] == 404 and body["error_type"]
        status, key = await call(http, "POST", f"{api}/api/v2/auth/api-keys", headers=alice,
                                 json={"name": "haproxy"})
        assert status == 201
        status, replica, body = await _post(http, url, {"Authorization": f"Bearer {key['key']}"})
        assert (status, replica) == (200, str(replica_id)), body
        # A token on a request always goes to the Python gateway, which checks it.
        status, _, _ = await _post(http, url, {"Authorization": "Bearer not-a-token"})
        assert status == 401
    finally:
        server.stop()
        await redis.aclose()


async def test_unknown_names_feedback_and_openai_go_to_the_python_gateway(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, clean: None) -> None:
    base, _ = await start_haproxy(spawn, http)
    status, _, body = await _post(http, f"{base}/serve/nothing-here/embed")
    assert status == 404 and body["error_type"] == "Validation", body
    async with http.post(f"{base}/v1/embeddings", json={"input": "x"}) as resp:
        assert resp.status == 422
        assert (await resp.json())["type"] == "Validation"
    async with http.get(f"{base}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_a_replica_that_refuses_connections_is_retried_on_another(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """`retry-on conn-failure` and `option redispatch`: one of two replicas is a closed port."""
    model_id = await hashing_model("half")
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8")
    try:
        await poll_health(http, server)
        _, generation = await deployments.begin_generation(pool, model_id, "half")
        live, dead = uuid4(), uuid4()
        for replica_id, endpoint in ((live, server.url),
                                     (dead, f"http://127.0.0.1:{free_port('127.0.0.1')}")):
            await replicas.insert(pool, replica_id=replica_id, model_id=model_id,
                                  generation=generation, task_id=None, runtime="process")
            await replicas.set_started(pool, replica_id, "test", endpoint)
        await deployments.switch(pool, model_id, generation, "half", {})
        base, stats = await start_haproxy(spawn, http)

        async def both_servers() -> bool:
            async with http.get(f"{stats}/stats;csv") as resp:
                rows = [row.split(",") for row in (await resp.text()).splitlines()]
            return sum(r[0].startswith("slot") and r[17] == "no check" for r in rows) == 2
        await _until(both_servers, 10, "HAProxy never served both replicas")
        answers = [await _post(http, f"{base}/serve/half/embed") for _ in range(20)]
        assert [(status, replica) for status, replica, _ in answers] == [(200, str(live))] * 20
    finally:
        server.stop()


async def test_a_jump_in_load_through_haproxy_is_reported_and_announced_at_once(
        spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        settings: Settings, hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """The autoscaler's signal on the HAProxy engine: requests HAProxy carries itself (a
    public model's) reach the report and `greenroom:load` within a fraction of a second,
    not at the next one-second report."""
    http = anon_http
    model_id = await hashing_model("busy")
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8",
                          MODEL_SERVER_TEST_SERVICE_TIME_MS="1500",
                          MODEL_SERVER_TEST_CONCURRENCY="16")
    redis = Redis.from_url(settings.require_redis_url())
    try:
        await poll_health(http, server)
        replica_id = await serve_replica(pool, model_id, "busy", server.url)
        base, _ = await start_haproxy(spawn, http)

        async def direct() -> bool:
            return any(str(replica_id) in r.requests for r in await gateway_reports(redis)
                       if r.gateway_id.startswith("haproxy-"))
        await _until(direct, 10, "HAProxy never got the replica as a server")
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe(LOAD_CHANNEL)
            await pubsub.get_message(timeout=1)  # the subscription's confirmation
            started = time.monotonic()
            load = [asyncio.create_task(_post(http, f"{base}/serve/busy/embed"))
                    for _ in range(8)]
            message = None
            while message is None and time.monotonic() - started < 1.2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            announced = time.monotonic() - started
        assert message is not None, "no announcement on greenroom:load within 1.2 s"
        assert message["data"].decode().startswith("haproxy-")
        [report] = [r for r in await gateway_reports(redis)
                    if r.gateway_id == message["data"].decode()]
        assert report.inflight.get(str(replica_id), 0) >= JUMP_MIN, report
        print(f"\nannounced {announced * 1000:.0f} ms after the burst, "
              f"{report.inflight[str(replica_id)]} in flight")
        assert all(status == 200 for status, _, _ in await asyncio.gather(*load))
    finally:
        server.stop()
        await redis.aclose()
