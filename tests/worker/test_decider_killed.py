"""Issue 14, must-show 3: two workers; the one deciding (and running the scale) is killed
with SIGKILL while scaling up. The other takes the lease within seconds and finishes the
job; no orphan replica, no double scale, and every scale task ends accounted for."""

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from schemas.queue import AUTOSCALER_LEASE_PREFIX, WORKER_KEY_PREFIX
from schemas.settings import Settings
from tests.conftest import Proc
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.autoscale import (
    CAPACITY,
    FAST_AUTOSCALING,
    KNOBS,
    deploy,
    ready_count,
    wait_for,
)
from tests.support.load import run_load
from worker.runtimes.process import ProcessRuntime

MAX = 4


async def test_the_other_worker_finishes_a_scale_whose_decider_was_killed(
        api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings, backing: dict[str, str],
        hashing_model: Any) -> None:
    model_id = await hashing_model("contested", startup_delay_s=4, **KNOBS)
    first = spawn("worker")
    config = FAST_AUTOSCALING | {"autoscaling_min": 1, "autoscaling_max": MAX}
    assert (await deploy(http, api, "alice/contested", config))["status"] == "done"
    redis = Redis.from_url(backing["redis"], decode_responses=True)
    lease = AUTOSCALER_LEASE_PREFIX + str(model_id)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            live = await pool.fetchval("SELECT count(*) FROM replicas WHERE model_id = $1 "
                                       "AND state IN ('starting', 'ready')", model_id)
            peak = max(peak, live)
            await asyncio.sleep(0.1)

    async def first_decides() -> bool:
        holder = await redis.get(lease)
        return holder is not None and f":{first.popen.pid}:" in holder

    # The second worker is up before the load: killing the first then never races its start.
    await wait_for(first_decides, 20, "the first worker holding the deployment's lease")
    second = spawn("worker")

    async def second_up() -> bool:
        return len([k async for k in redis.scan_iter(WORKER_KEY_PREFIX + "*")]) == 2

    await wait_for(second_up, 30, "the second worker's heartbeat")
    watcher = asyncio.create_task(watch())
    load = asyncio.create_task(run_load(f"{gateway}/serve/contested/embed", rate=3 * CAPACITY,
                                        duration_s=35, concurrency=2000, timeout_s=60))
    try:
        async def scaling() -> bool:
            return bool(await pool.fetchval(
                "SELECT count(*) FROM tasks WHERE model_id = $1 AND kind = 'scale' "
                "AND status = 'processing' AND phase = 'health_checking'", model_id))

        await wait_for(scaling, 20, "a scale task health-checking its new replicas")
        assert await first_decides(), "the first worker still decides"
        first.kill(signal.SIGKILL)
        killed_at = time.monotonic()

        async def taken_over() -> bool:
            holder = await redis.get(lease)
            return holder is not None and f":{second.popen.pid}:" in holder

        await wait_for(taken_over, 10, "the second worker taking the lease")
        takeover = time.monotonic() - killed_at

        async def scaled() -> bool:
            return (await ready_count(pool, model_id)).get(1, 0) >= 3

        await wait_for(scaled, 40, "the scale-up finished by the second worker")
        heavy = await load
    finally:
        watcher.cancel()
        await redis.aclose()
    rows = await pool.fetch("SELECT status, attempts, worker_id, detail FROM tasks "
                            "WHERE model_id = $1 AND kind = 'scale' ORDER BY created_at",
                            model_id)
    print(f"\nlease taken over {takeover:.1f} s after kill -9; scale tasks: "
          f"{[(r['status'], r['attempts'], r['detail']) for r in rows]}; peak live replicas "
          f"{peak}; failed requests {len(heavy.failures)} of {heavy.sent}")
    assert takeover < settings.lease_s
    assert all(r["status"] in ("done", "canceled", "failed") for r in rows), rows
    assert any(r["status"] == "done" and str(second.popen.pid) in r["worker_id"]
               for r in rows), "the second worker finished a scale"
    assert peak <= MAX, "never more replicas than the maximum: no double scale"
    assert heavy.failures == [], heavy.failures[:5]
    ready = await ready_count(pool, model_id)
    live = [r for r in await ProcessRuntime(settings).list() if r.running]
    starting = await pool.fetchval("SELECT count(*) FROM replicas WHERE model_id = $1 "
                                   "AND state = 'starting'", model_id)
    assert starting == 0 and len(live) == sum(ready.values()), (live, ready)
