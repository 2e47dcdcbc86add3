"""Issue 27, item 3 on real replicas (process runtime, Python gateway): autoscaling during a
canary scales each generation on its own share of a steady load, and the worker's
autoscaler loop makes no scale task meanwhile.

12 requests a second at 200 ms each (2.4 in flight; one replica aims at 1.6) keep two
replicas of the serving generation busy, and the candidate starts at that count. At 10 %
its share (0.24 in flight) wants one replica and it goes down to one; before its weight
rises to 100 % it is scaled for that share (two) and the step waits for the second to be
healthy. The serving generation keeps the two replicas the whole load needs throughout,
its share going to nothing: a failing step would give it all of it back at once. No
request fails throughout. The decisions on their own, fast:
tests/worker/test_phase_scaling.py."""

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import pytest

from db import events, replicas, tasks, traffic
from tests.conftest import Proc
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.autoscale import FAST_AUTOSCALING, KNOBS, deploy
from tests.support.load import run_load
from worker.scaling.phase_scaling import routed

pytestmark = [pytest.mark.serial, pytest.mark.timeout(180)]
RATE = 12.0
CANARY = {"strategy": "canary", "canary": {"steps": [10, 100], "step_s": 8, "min_requests": 8,
                                           "p99_slack_ms": 50}}


async def test_the_candidate_replicas_follow_its_share_of_the_load(
        api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        pool: asyncpg.Pool, hashing_model: Any) -> None:
    model_id = await hashing_model("shares", **KNOBS)
    spawn("worker")
    config = FAST_AUTOSCALING | {"autoscaling_min": 1, "autoscaling_max": 3}
    assert (await deploy(http, api, "alice/shares", config | {"replicas": 2}))["status"] \
        == "done"
    url = f"{gateway}/serve/shares/embed"
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(url, RATE, 150, concurrency=200, stop=stop))
    seen: list[tuple[int, int, int]] = []  # (candidate's weight, its replicas, serving's)

    async def watch() -> None:
        while True:
            split = await traffic.get_split(pool, model_id)
            if split is not None:
                rows = await replicas.list_for_model(pool, model_id)
                seen.append((split.weight, len(routed(rows, 2, serving=False)),
                             len(routed(rows, 1, serving=True))))
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(2)
    task = await deploy(http, api, "alice/shares", config | {"rollout": CANARY})
    watcher.cancel()
    stop.set()
    done = await load
    steps = task["metadata"].get("rollout", {}).get("steps") or []
    said = sorted((e.created_at, e.message) for e in await events.list_recent(pool, model_id, 200))
    print("\n  " + "\n  ".join(m for _, m in said if m.startswith("generation ")))
    print("  (weight, candidate's replicas, serving's) as they changed: "
          + ", ".join(str(x) for i, x in enumerate(seen) if i == 0 or seen[i - 1] != x))
    print("\n".join(f"  {s['weight']:3d} %: {s['verdict']} serving {s['serving']['requests']} "
                    f"req p99 {s['serving']['p99_ms']} ms, candidate {s['candidate']['requests']}"
                    f" req p99 {s['candidate']['p99_ms']} ms" for s in steps))
    assert task["status"] == "done", (task["detail"], steps)
    small = [(c, s) for w, c, s in seen if w == 10]
    whole = [(c, s) for w, c, s in seen if w == 100]
    assert small[0][0] == 2 and min(c for c, _ in small) == 1, small
    assert whole[0][0] == 2, ("the candidate was scaled for its share before it", whole[:3])
    assert all(s == 2 for _, s in small + whole), ("the serving one kept its two", seen)
    assert task["metadata"]["replicas_current"] == 2
    # The worker's autoscaler loop ran all along: it made no scale task while the deploy
    # was open (the phase scaled both generations itself).
    latest = await tasks.latest_for_model(pool, model_id, "scale")
    assert latest is None or latest.created_at < datetime.fromisoformat(task["created_at"]), \
        latest
    assert done.failures == [], done.failures[:5]
