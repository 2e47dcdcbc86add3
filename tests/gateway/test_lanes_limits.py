"""Issue 29 at the Python gateway, real gateway and replica processes: the lane a key and a
header choose reaches the replica, a batch-lane key cannot raise itself, per-key limits are
429 with Retry-After and x-ratelimit-* headers, and a deadline ends a hold with a 504."""

import asyncio
import re
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from db import api_keys, deployments, users
from edge.auth.authentication import hash_api_key
from schemas.gateway import GatewayReport
from schemas.lanes import PRIORITY_HEADER, TIMEOUT_HEADER
from schemas.queue import GATEWAY_KEY_PREFIX
from schemas.settings import Settings
from schemas.tokens import issue_user_token
from tests.conftest import TEST_SECRET_KEY, Proc, start_gateway

from .test_gateway_answers import ENGINES, _start, _until_routed, hashing_replica, serve_from


async def _key(pool: asyncpg.Pool, name: str, **traits: Any) -> str:
    user_id = await pool.fetchval("SELECT id FROM users WHERE username = 'alice'")
    key = f"gr_{name}_" + "k" * 32
    await api_keys.insert(pool, user_id=user_id, key_hash=hash_api_key(key), name=name,
                          expires_at=None, **traits)
    return key


async def _lane_counts(http: aiohttp.ClientSession, replica: str) -> dict[str, float]:
    async with http.get(f"{replica}/metrics") as resp:
        text = await resp.text()
    return {lane: float(value) for lane, value in
            re.findall(r'model_server_lane_inputs_total\{lane="(\w+)"\} (\S+)', text)}


@pytest.mark.timeout(120)
async def test_lanes_reach_the_replica_and_per_key_limits_answer_429_with_their_headers(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    model_id = await hashing_model("lanes")
    ingest = await _key(pool, "ingest", lane="batch")
    query = await _key(pool, "query")
    # Limits slow enough that no machine's slowness refills them within the test.
    limited = await _key(pool, "limited", requests_per_s=0.2)
    thrifty = await _key(pool, "thrifty", tokens_per_s=1.0)
    async with hashing_replica(http, tmp_path) as replica:
        await serve_from(pool, model_id, "lanes", [replica])
        base = await start_gateway(spawn, http)
        url = f"{base}/serve/lanes/embed"
        status, _ = await _until_routed(http, url, {"inputs": "warm"})
        assert status == 200
        before = await _lane_counts(http, replica)

        async def embed(key: str, lane: str | None = None, inputs: int = 1,
                        path: str = "/serve/lanes/embed") -> aiohttp.ClientResponse:
            headers = {"Authorization": f"Bearer {key}"}
            if lane is not None:
                headers[PRIORITY_HEADER] = lane
            body: dict[str, Any] = {"inputs": ["one two three"] * inputs}
            if path == "/v1/embeddings":
                body = {"model": "lanes", "input": body["inputs"]}
            async with http.post(f"{base}{path}", json=body, headers=headers) as resp:
                await resp.read()
                return resp

        # A batch-lane key asking for interactive stays in the batch lane (2 inputs);
        # an interactive key lowers itself with the header (3 inputs), or is interactive.
        assert (await embed(ingest, "interactive", inputs=2)).status == 200
        assert (await embed(query, "batch", inputs=3, path="/v1/embeddings")).status == 200
        assert (await embed(query, inputs=4)).status == 200
        after = await _lane_counts(http, replica)
        assert after["batch"] - before.get("batch", 0) == 5
        assert after["interactive"] - before.get("interactive", 0) == 4
        refused = await embed(query, "urgent")
        assert refused.status == 422

        # 0.2 requests/s, a bucket of one request: the second within 5 s is refused.
        answers = [await embed(limited) for _ in range(2)]
        assert [a.status for a in answers] == [200, 429]
        assert answers[0].headers["x-ratelimit-limit-requests"] == "0.2"
        assert answers[0].headers["x-ratelimit-remaining-requests"] == "0"
        over = answers[1]
        assert 1 <= int(over.headers["Retry-After"]) <= 5
        assert over.headers["x-ratelimit-remaining-requests"] == "0"
        assert float(over.headers["x-ratelimit-reset-requests"].rstrip("s")) > 0
        async with http.post(url, json={"inputs": "x"},
                             headers={"Authorization": f"Bearer {limited}"}) as resp:
            body = await resp.json()
            assert resp.status == 429 and body["status_code"] == 429, body
            assert body["error_type"] == "Overloaded"
        # Another key is not limited by this one's use.
        assert (await embed(query)).status == 200

        # 1 token/s: the first request (the replica says how many it cost) takes the
        # bucket into debt, the next waits until it is paid back.
        first = await embed(thrifty, inputs=4)
        spent = int(first.headers["X-Greenroom-Tokens"])
        assert first.status == 200 and spent > 5
        second = await embed(thrifty)
        assert second.status == 429
        assert int(second.headers["Retry-After"]) >= spent - 2
        assert second.headers["x-ratelimit-limit-tokens"] == "1"


@pytest.mark.timeout(120)
async def test_a_session_token_gets_the_default_limits_per_user_and_model(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """Before, only API keys had buckets: a logged-in user's session token was unlimited.
    Now a session gets the gateway's default limits per user and model (a user's sessions
    share them); an anonymous caller of the public deployment gets none."""
    model_id = await hashing_model("sessions")
    alice = await pool.fetchval("SELECT id FROM users WHERE username = 'alice'")
    bob = await users.create(pool, username="bob", password_hash="x")
    # Two sessions of alice's (two logins: different expiries, so different tokens).
    first, second = (issue_user_token(TEST_SECRET_KEY, alice, ttl=timedelta(hours=hours))
                     for hours in (1, 2))
    assert first != second
    async with hashing_replica(http, tmp_path) as replica:
        await serve_from(pool, model_id, "sessions", [replica])
        # 0.2 requests/s, a bucket of one request: a second within 5 s is refused.
        base = await start_gateway(spawn, http, gateway_key_requests_per_s=0.2)
        url = f"{base}/serve/sessions/embed"
        assert (await _until_routed(http, url, {"inputs": "warm"}))[0] == 200

        async def embed(token: str | None, lane: str | None = None) -> aiohttp.ClientResponse:
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            if lane is not None:
                headers[PRIORITY_HEADER] = lane
            async with http.post(url, json={"inputs": "one two"}, headers=headers) as resp:
                await resp.read()
                return resp

        before = await _lane_counts(http, replica)
        ok = await embed(first, "batch")
        assert ok.status == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "0.2"
        assert ok.headers["x-ratelimit-remaining-requests"] == "0"
        assert (await _lane_counts(http, replica))["batch"] - before.get("batch", 0) == 1
        over = await embed(second)  # alice's other session draws on the same bucket
        assert over.status == 429
        assert 1 <= int(over.headers["Retry-After"]) <= 5
        assert over.headers["x-ratelimit-remaining-requests"] == "0"
        bobs = await embed(issue_user_token(TEST_SECRET_KEY, bob.id))
        assert bobs.status == 200, "another user is not limited by alice's use"
        # Anonymous callers of a public deployment: no buckets, no x-ratelimit headers.
        anonymous = [await embed(None) for _ in range(3)]
        assert [a.status for a in anonymous] == [200] * 3
        assert "x-ratelimit-limit-requests" not in anonymous[-1].headers


@pytest.mark.timeout(60)
async def test_a_deadline_ends_the_hold_for_a_deployment_at_zero_with_a_504(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None) -> None:
    model_id = await hashing_model("asleep")
    _, generation = await deployments.begin_generation(pool, model_id, "asleep")
    await deployments.switch(pool, model_id, generation, "asleep",
                             {"autoscaling_enabled": True, "autoscaling_min": 0})
    base = await start_gateway(spawn, http, gateway_hold_timeout_s=30)
    for _ in range(100):  # until the gateway has the route (a 404 before)
        started = time.monotonic()
        async with http.post(f"{base}/v1/embeddings", json={"model": "asleep", "input": "x"},
                             headers={TIMEOUT_HEADER: "0.3"}) as resp:
            status, body = resp.status, await resp.json()
        if status != 404:
            break
        await asyncio.sleep(0.05)
    waited = time.monotonic() - started
    assert status == 504, body
    assert body["code"] == 504 and "X-Request-Timeout" in body["message"]
    assert 0.25 < waited < 5
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    assert 'greenroom_gateway_expired_total{deployment="asleep"} 1.0' in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ENGINES)
async def test_the_lane_header_reaches_the_replica_through_either_engine(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path, engine: str) -> None:
    """An anonymous caller of a public deployment (HAProxy serves it directly) lowers its
    request to the batch lane; a deadline too short for the queue is the replica's 504."""
    model_id = await hashing_model("either")
    async with hashing_replica(http, tmp_path) as replica:
        await serve_from(pool, model_id, "either", [replica])
        base = await _start(spawn, http, engine)
        url = f"{base}/serve/either/embed"
        assert (await _until_routed(http, url, {"inputs": "warm"}))[0] == 200
        before = await _lane_counts(http, replica)
        async with http.post(url, json={"inputs": ["a", "b"]},
                             headers={PRIORITY_HEADER: "batch", TIMEOUT_HEADER: "5"}) as resp:
            assert resp.status == 200, await resp.text()
        after = await _lane_counts(http, replica)
        assert after["batch"] - before.get("batch", 0) == 2


@pytest.mark.timeout(60)
async def test_a_caller_that_disconnects_while_held_stops_waiting_at_once(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, settings: Settings) -> None:
    """Before: the gateway went on holding a request whose caller had gone, counted as
    demand, until the hold's 30 s passed. Now its handler is cancelled with the caller."""
    model_id = await hashing_model("gone")
    _, generation = await deployments.begin_generation(pool, model_id, "gone")
    await deployments.switch(pool, model_id, generation, "gone",
                             {"autoscaling_enabled": True, "autoscaling_min": 0})
    base = await start_gateway(spawn, http, gateway_hold_timeout_s=30)
    redis = Redis.from_url(settings.require_redis_url())

    async def held() -> int:
        total = 0
        for key in await redis.keys(GATEWAY_KEY_PREFIX + "*"):
            report = GatewayReport.model_validate_json(await redis.get(key))
            total += sum(report.held.values())
        return total

    try:
        for _ in range(100):  # until the gateway has the route (a 404 before, a 504 once
            # held past this short deadline)
            async with http.post(f"{base}/serve/gone/embed", json={"inputs": "x"},
                                 headers={TIMEOUT_HEADER: "0.1"}) as resp:
                if resp.status != 404:
                    break
            await asyncio.sleep(0.05)

        async def call() -> None:
            async with http.post(f"{base}/serve/gone/embed", json={"inputs": "x"}) as resp:
                await resp.read()

        waiting = asyncio.create_task(call())
        for _ in range(50):
            if await held() == 1:
                break
            await asyncio.sleep(0.1)
        assert await held() == 1, "the request was never held"
        waiting.cancel()  # the caller goes away
        gone_at = time.monotonic()
        for _ in range(50):
            if not await held():
                break
            await asyncio.sleep(0.1)
        assert await held() == 0
        assert time.monotonic() - gone_at < 3
    finally:
        await redis.aclose()
