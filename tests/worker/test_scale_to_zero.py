"""Issue 14, must-show 2: idle → 0 replicas; the next request is held through a cold start
and served; with no replica able to get ready, held requests get 503 + Retry-After within
the bound (and past the count bound, at once). Issue 28: a request held while the scale
to zero still drains its replica calls the scale-down off: that replica serves it, no
replica starts."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import Proc, start_gateway
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.autoscale import FAST_AUTOSCALING, deploy, ready_count, wait_for

HOLD_S, HOLD_MAX = 8.0, 5
# Idle to zero takes the stable window (the in-flight average falls to 0), the scale-down
# delay after it, and the grace; the test waits for it twice, so it takes half of
# FAST_AUTOSCALING's: what is shown (idle goes to 0, then a held request wakes it) is the
# same at any length of these windows.
TO_ZERO_FAST = {"autoscaling_stable_window_s": 3, "autoscaling_scale_down_delay_s": 2,
                "autoscaling_scale_to_zero_grace_s": 2}


async def _embed(url: str) -> tuple[int, dict[str, Any], dict[str, str], float]:
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http, \
            http.post(url, json={"inputs": "wake up"}) as resp:
        body = await resp.json()
        return resp.status, body, dict(resp.headers), time.perf_counter() - started


async def _poll(check: Callable[[], Any], timeout_s: float, what: str) -> None:
    """As `wait_for`, every 20 ms: the drain of a scale to zero lasts about a second here."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:g} s"
        await asyncio.sleep(0.02)


async def test_idle_goes_to_zero_then_a_held_request_is_served_after_a_cold_start(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        pool: asyncpg.Pool, hashing_model: Any) -> None:
    model_id = await hashing_model("sleepy")
    gateway = await start_gateway(spawn, http, gateway_hold_timeout_s=HOLD_S,
                                  gateway_hold_max=HOLD_MAX)
    spawn("worker")
    config = FAST_AUTOSCALING | TO_ZERO_FAST | {"autoscaling_min": 0, "autoscaling_max": 2}
    assert (await deploy(http, api, "alice/sleepy", config))["status"] == "done"
    url = f"{gateway}/serve/sleepy/embed"
    status, _, _, _ = await _embed(url)
    assert status == 200

    async def at_zero() -> bool:
        """No replica left running, no task open: the scale to zero finished."""
        return not await pool.fetchval(
            """SELECT (SELECT count(*) FROM replicas WHERE model_id = $1
                         AND state IN ('starting', 'ready', 'draining'))
                    + (SELECT count(*) FROM tasks WHERE model_id = $1
                         AND status IN ('pending', 'processing'))""", model_id)

    idle_s = await wait_for(at_zero, 40, "scale to zero")
    status, body, _, cold = await _embed(url)
    print(f"\nidle → 0 replicas after {idle_s:.1f} s; cold start: the held request was "
          f"served in {cold * 1000:.0f} ms (hold bound {HOLD_S:g} s)")
    assert status == 200, body
    assert await ready_count(pool, model_id) == {1: 1}

    # The next scale to zero, caught while it drains its replica (none ready, one still
    # running): a request then is served by that replica, put back; nothing starts.
    serving = await pool.fetchval("SELECT id FROM replicas WHERE model_id = $1 "
                                  "AND state = 'ready'", model_id)

    async def draining() -> bool:
        return await pool.fetchval("SELECT state FROM replicas WHERE id = $1",
                                   serving) == "draining"

    await _poll(draining, 40, "the scale to zero's drain")
    # The request must come once the gateway has taken the replica out of its table (it is
    # then held); under load the gateway's reload lags the database, and a request sent at
    # once went to the draining replica itself, calling nothing off. The drain lasts at
    # least a routes poll (2 s, worker/drain.py `min_wait_for`) past this point.
    await asyncio.sleep(1.0)
    status, body, _, warm = await _embed(url)
    assert status == 200, body
    assert await pool.fetchval("SELECT state FROM replicas WHERE id = $1", serving) == "ready"
    assert await pool.fetchval("SELECT count(*) FROM replicas WHERE model_id = $1",
                               model_id) == 2, "no replica was started"
    said = await pool.fetchval("SELECT count(*) FROM deployment_events WHERE model_id = $1 "
                               "AND message LIKE 'scale to zero called off%'", model_id)
    assert said == 1
    print(f"held during the scale to zero's drain: served in {warm * 1000:.0f} ms by the "
          f"draining replica, put back (the cold start took {cold * 1000:.0f} ms)")

    # Now no replica can get ready within the bound: the model takes 60 s to load.
    await wait_for(at_zero, 40, "scale to zero again")
    # Every replica of a generation loads the revision it pinned (issue 26), a scale-up
    # from zero too: the test knob makes that revision's load take 60 s.
    await pool.execute(
        """UPDATE model_revisions v SET source = v.source || '{"startup_delay_s": 60}'
           FROM deployment_generations g WHERE g.model_id = $1
             AND v.model_id = g.model_id AND v.number = g.revision""", model_id)
    started = time.perf_counter()
    answers = await asyncio.gather(*(_embed(url) for _ in range(HOLD_MAX + 3)))
    statuses = sorted(a[0] for a in answers)
    assert statuses == [503] * (HOLD_MAX + 3), statuses
    for _, body, headers, elapsed in answers:
        assert body["status_code"] == 503 and body["message"], body
        assert int(headers["Retry-After"]) >= 1
        assert elapsed < HOLD_S + 2, "never a hang"
    quick = [a for a in answers if a[3] < HOLD_S - 1]
    assert len(quick) == 3, "past the count bound: refused at once"
    print(f"no replica ready: {HOLD_MAX} held requests got 503 + Retry-After after "
          f"{max(a[3] for a in answers):.1f} s, 3 over the bound at once "
          f"({time.perf_counter() - started:.1f} s in all)")
