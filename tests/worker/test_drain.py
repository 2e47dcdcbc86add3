"""The drain wait (worker/drain.py) against a real Redis, and against none."""

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from schemas.gateway import GatewayReport
from schemas.queue import GATEWAY_KEY_PREFIX
from worker.drain import drain_unless_held, wait_drained
from worker.runtimes.process import free_port

MODEL, OLD = uuid4(), uuid4()


@pytest.fixture
async def redis(backing: dict[str, str], clean: None) -> AsyncIterator[Redis]:
    client = Redis.from_url(backing["redis"])
    yield client
    await client.aclose()


async def _report(redis: Redis, generation: int, inflight: int, gateway: str = "g1",
                  held: int = 0) -> None:
    report = GatewayReport(gateway_id=gateway, at=time.time(),
                           generations={str(MODEL): generation},
                           inflight={str(OLD): inflight} if inflight else {},
                           held={str(MODEL): held} if held else {})
    await redis.set(GATEWAY_KEY_PREFIX + gateway, report.model_dump_json(), ex=10)


async def test_waits_for_the_new_generation_and_no_request_in_flight(redis: Redis) -> None:
    await _report(redis, generation=1, inflight=0)
    waiter = asyncio.create_task(wait_drained(redis, MODEL, 2, [OLD], timeout_s=10))
    await asyncio.sleep(0.3)
    assert not waiter.done(), "the gateway still routes to generation 1"
    await _report(redis, generation=2, inflight=3)
    await asyncio.sleep(0.3)
    assert not waiter.done(), "three requests are still in flight on the old replica"
    await _report(redis, generation=2, inflight=0)
    assert await asyncio.wait_for(waiter, 2) is True


async def test_waits_for_every_gateway(redis: Redis) -> None:
    """Two gateway processes: one idle on the new generation does not end the wait while the
    other still has a request in flight on the old replica."""
    await _report(redis, generation=2, inflight=0, gateway="g1")
    await _report(redis, generation=2, inflight=1, gateway="g2")
    waiter = asyncio.create_task(wait_drained(redis, MODEL, 2, [OLD], timeout_s=10))
    await asyncio.sleep(0.3)
    assert not waiter.done(), "the second gateway still has a request in flight"
    await _report(redis, generation=2, inflight=0, gateway="g2")
    assert await asyncio.wait_for(waiter, 2) is True


@pytest.mark.serial  # an upper bound of 0.1 s on a wait that must not happen
async def test_never_shorter_than_a_silent_gateway_needs_to_poll(redis: Redis) -> None:
    started = time.monotonic()
    assert await wait_drained(redis, MODEL, 2, [OLD], timeout_s=10, min_wait_s=0.5) is True
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    assert await wait_drained(redis, MODEL, 2, [], timeout_s=10, min_wait_s=5) is True
    assert time.monotonic() - started < 0.1, "nothing to drain: no wait"


async def test_unreadable_reports_wait_to_the_bound_instead_of_failing() -> None:
    nobody = Redis.from_url(f"redis://127.0.0.1:{free_port('127.0.0.1')}/0",
                            socket_connect_timeout=0.2)
    started = time.monotonic()
    try:
        assert await wait_drained(nobody, MODEL, 2, [OLD], timeout_s=0.6) is False
    finally:
        await nobody.aclose()
    assert time.monotonic() - started >= 0.6


async def test_a_request_held_for_the_model_calls_a_scale_to_zero_off(redis: Redis) -> None:
    """The scale to zero's drain (issue 28): a request held for the model on any gateway
    ends it at once, even with a request still in flight and the minimum wait not over."""
    await _report(redis, generation=1, inflight=1, gateway="g1")
    await _report(redis, generation=1, inflight=0, gateway="g2")
    started = time.monotonic()
    waiter = asyncio.create_task(drain_unless_held(redis, MODEL, 1, [OLD], timeout_s=10,
                                                   min_wait_s=5))
    await asyncio.sleep(0.3)
    assert not waiter.done(), "nothing held yet: it drains"
    await _report(redis, generation=1, inflight=0, gateway="g2", held=1)
    assert await asyncio.wait_for(waiter, 2) == "held"
    assert time.monotonic() - started < 5, "called off before the minimum wait"
    assert await wait_drained(redis, MODEL, 1, [OLD], timeout_s=0.3) is False, \
        "a drain that is not a scale to zero does not look at held requests"


async def test_a_scale_to_zero_with_nothing_held_drains_as_any_drain(redis: Redis) -> None:
    await _report(redis, generation=1, inflight=0, gateway="g1")
    await _report(redis, generation=1, inflight=0, gateway="g2", held=0)
    assert await drain_unless_held(redis, MODEL, 1, [OLD], timeout_s=5) == "drained"
    await _report(redis, generation=1, inflight=2, gateway="g1")
    assert await drain_unless_held(redis, MODEL, 1, [OLD], timeout_s=0.3) == "timed_out"
