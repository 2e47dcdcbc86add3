"""The test knobs give one replica a known capacity: concurrency / service time."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.model_server.conftest import hashing_settings, wait_until_healthy

# Both tests bound the time of eight requests from above (0.8 s, 0.3 s).
pytestmark = pytest.mark.serial


async def test_capacity_is_concurrency_over_service_time(make_client: Callable[..., Any]) -> None:
    client = await make_client(hashing_settings(test_service_time_ms=100, test_concurrency=2))
    await wait_until_healthy(client)

    async def one() -> int:
        resp = await client.post("/embed", json={"inputs": "hello world"})
        await resp.read()
        return resp.status

    started = time.perf_counter()
    statuses = await asyncio.gather(*(one() for _ in range(8)))
    elapsed = time.perf_counter() - started
    assert statuses == [200] * 8
    # 8 requests, 2 at a time, 0.1 s each: four rounds.
    assert 0.38 <= elapsed < 0.8, elapsed
    health = await client.get("/health")
    assert health.status == 200


async def test_off_by_default(make_client: Callable[..., Any]) -> None:
    client = await make_client(hashing_settings())
    await wait_until_healthy(client)
    started = time.perf_counter()
    await asyncio.gather(*(client.post("/embed", json={"inputs": "x"}) for _ in range(8)))
    assert time.perf_counter() - started < 0.3


async def test_error_rate_fails_that_share_evenly(make_client: Callable[..., Any]) -> None:
    client = await make_client(hashing_settings(test_error_rate=0.1))
    await wait_until_healthy(client)
    statuses = []
    for _ in range(40):
        resp = await client.post("/embed", json={"inputs": "x"})
        body = await resp.json()
        statuses.append(resp.status)
        if resp.status == 500:
            assert "test_error_rate" in body["error"]
    # Exactly every tenth request fails; /health is untouched.
    assert [i for i, s in enumerate(statuses) if s != 200] == [9, 19, 29, 39]
    assert (await client.get("/health")).status == 200


async def test_a_deadline_that_passes_while_waiting_for_a_slot_is_a_504_counted(
        make_client: Callable[..., Any]) -> None:
    """Before, a request queued for the knob's slots waited past its X-Request-Timeout
    and was computed anyway; now it is dropped where it waits, as in the batcher."""
    client = await make_client(hashing_settings(test_service_time_ms=1000, test_concurrency=1))
    await wait_until_healthy(client)
    holder = asyncio.create_task(client.post("/embed", json={"inputs": "first"}))
    await asyncio.sleep(0.2)  # the first request holds the only slot for a second
    started = time.perf_counter()
    late = await client.post("/embed", json={"inputs": "second"},
                             headers={"X-Request-Timeout": "0.2",
                                      "X-Greenroom-Priority": "batch"})
    body = await late.json()
    assert late.status == 504, body
    assert "X-Request-Timeout" in body["error"]
    assert time.perf_counter() - started < 0.7
    assert (await holder).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'model_server_expired_total{lane="batch"} 1.0' in metrics


async def test_a_free_slot_goes_to_the_interactive_lane_first(
        make_client: Callable[..., Any]) -> None:
    """Before, the knob's slots were first come, first served: a query waited behind every
    queued request of a bulk client, so a simulated replica could not show the lanes."""
    client = await make_client(hashing_settings(test_service_time_ms=300, test_concurrency=1))
    await wait_until_healthy(client)
    done: list[str] = []

    async def call(name: str, lane: str) -> None:
        resp = await client.post("/embed", json={"inputs": name},
                                 headers={"X-Greenroom-Priority": lane})
        assert resp.status == 200, await resp.text()
        done.append(name)

    holder = asyncio.create_task(call("holder", "batch"))
    await asyncio.sleep(0.1)  # it holds the only slot
    bulk = [asyncio.create_task(call(f"bulk{i}", "batch")) for i in range(2)]
    await asyncio.sleep(0.05)  # queued first
    query = asyncio.create_task(call("query", "interactive"))
    await asyncio.gather(holder, *bulk, query)
    assert done == ["holder", "query", "bulk0", "bulk1"]
