"""Issue 31: the deployment page draws the series over time in a real browser (headless
Chromium). Paced load goes through a gateway while the deployment scales from one replica
to two and then rolls out a new generation; the worker's series loop (2 s buckets here, 10 s
by default) writes the buckets, and the page, left open, draws the traffic, latency and
replica lines of both generations and the rollout's and scale's events as markers, live.
The screenshot is kept in the artifacts folder (docs/images/series-chart.png is one)."""

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from playwright.async_api import expect

from tests.conftest import START_TIMEOUT_S, Proc, start_gateway
from tests.console.conftest import PASSWORDS, Console, open_page
from tests.support.accounts import call, make_user
from tests.support.load import run_load
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

BUCKET_S = 2.0
RATE = 20


async def _until(check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the series never showed what the test waits for")
        await asyncio.sleep(0.5)


async def _done(http: aiohttp.ClientSession, base: str, task_id: str,
                headers: dict[str, str]) -> None:
    async def finished() -> dict[str, Any] | None:
        _, task = await call(http, "GET", f"{base}/deploy/{task_id}", headers=headers)
        return task if task["status"] not in ("pending", "processing") else None

    task = await _until(finished, 90)
    assert task["status"] == "done", task


async def test_the_page_draws_traffic_replicas_and_rollout_markers_live(
        browser: Any, artifacts: Path, spawn: Callable[..., Proc], pool: asyncpg.Pool,
        http: aiohttp.ClientSession, hashing_model: Any, clean: None) -> None:
    port = free_port("127.0.0.1")
    spawn("service", api_port=port, series_bucket_s=BUCKET_S)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(http, base + "/healthz", timeout_s=START_TIMEOUT_S)
    spawn("worker", series_bucket_s=BUCKET_S)
    _, alice = await make_user(pool, "alice", password=PASSWORDS["alice"])
    await hashing_model("charted")
    status, task = await call(http, "POST", f"{base}/deploy", headers=alice,
                              json={"model_id": "alice/charted", "config": {"replicas": 1}})
    assert status == 202, task
    await _done(http, base, task["task_id"], alice)
    gateway = await start_gateway(spawn, http)

    page = await open_page(browser, Console(base, pool, {"alice": alice}), "alice")
    await page.goto(f"{base}/ui/#/deployments/alice/charted")
    await page.get_by_role("button", name="2m").click()

    url = f"{gateway}/serve/charted/embed"
    load = asyncio.create_task(run_load(url, RATE, 30.0, concurrency=16))
    await asyncio.sleep(8)
    status, scaled = await call(http, "POST", f"{base}/api/v2/deploy/alice/charted/scale",
                                headers=alice, json={"replicas": 2})
    assert status == 202, scaled
    await asyncio.sleep(8)
    status, task = await call(http, "POST", f"{base}/deploy", headers=alice,
                              json={"model_id": "alice/charted", "config": {"replicas": 2}})
    assert status == 202, task
    await _done(http, base, task["task_id"], alice)
    done = await load
    assert not done.failures, done.failures[:3]

    async def both_generations() -> dict[str, Any] | None:
        body: dict[str, Any]
        _, body = await call(http, "GET", f"{base}/api/v2/deployments/alice/charted/series"
                             "?window=2m", headers=alice)
        gens = body["generations"]
        if len(gens) == 2 and len(gens[1]["points"]) >= 3 and \
                any(p["requests_per_s"] > 0 for p in gens[1]["points"]):
            return body
        return None

    body = await _until(both_generations, 30)
    series_url = f"{base}/api/v2/deployments/alice/charted/series"
    for bad in ("1d", "-5m", "", "1.5h"):
        status, refused = await call(http, "GET", f"{series_url}?window={bad}", headers=alice)
        assert status == 422 and "window" in refused["message"], (bad, refused)
    # A window past 24 h or under 30 s is read as the nearer bound, and says so.
    for given, read in (("25h", 86400), ("0", 30)):
        status, clamped = await call(http, "GET", f"{series_url}?window={given}", headers=alice)
        assert status == 200 and clamped["window_s"] == read, (given, clamped)
    _, stranger = await make_user(pool, "stranger", password=PASSWORDS["stranger"])
    status, _ = await call(http, "GET", series_url, headers=stranger)
    assert status == 200, "a public model's series: anyone who may read it"
    await pool.execute("UPDATE models SET access_level = 'private' WHERE name = 'charted'")
    status, _ = await call(http, "GET", series_url, headers=stranger)
    assert status == 404, "a private model's series: as missing to a stranger"
    await pool.execute("UPDATE models SET access_level = 'public' WHERE name = 'charted'")
    first = body["generations"][0]["points"]
    busiest = max(p["requests_per_s"] for p in first)
    print(f"series: generation 1 peaked at {busiest} requests/s (sent {RATE}/s), "
          f"{len(body['events'])} events")
    assert RATE * 0.25 <= busiest <= RATE * 2  # wide: it runs beside other tests
    assert max(p["replicas"] for p in first) == 2, "the scale-up shows in the replica line"
    assert min(p["replicas"] for p in first if p["requests_per_s"] > 0) == 1
    assert any(p["p99_ms"] for p in first) and all(
        p["p50_ms"] <= p["p99_ms"] for p in first if p["p50_ms"] is not None)
    assert body["events"], "the rollout's and the scale's events are markers"

    # The page, open all along, redraws by itself: two generations' lines, the markers.
    charts = page.locator("#series .series-charts")
    await expect(page.locator("#series [data-generation]")).to_have_count(2, timeout=20_000)
    await expect(charts).to_have_attribute("data-markers", re.compile(r"^[1-9]\d*$"))
    for chart in ("series-traffic", "series-latency", "series-replicas"):
        await expect(page.locator(f"#{chart} path.line").first).to_be_visible()
    replicas_line = page.locator("#series-replicas path[data-label='gen 1 replicas']")
    await expect(replicas_line).to_have_count(1)
    await expect(page.locator("#series-traffic g.marker").first).to_be_attached()
    await page.locator("#series").screenshot(path=artifacts / "31-series-chart.png")
    await page.screenshot(path=artifacts / "31-deployment-page.png", full_page=True)

