"""Issue 27, must-show 4: the console's rollout view of a real canary (headless Chromium):
the candidate's weight over time and both generations' error rate and p99 per step, the
steps' table, while it runs and when done; screenshots in the artifacts folder."""

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from tests.conftest import start_gateway
from tests.console.conftest import Console, open_page
from tests.support.load import run_load

# p99_slack_ms: the shared test machine's jitter (tests/worker/test_canary_rollout.py GOOD).
CANARY = {"strategy": "canary", "canary": {"steps": [20, 50, 100], "step_s": 2,
                                           "min_requests": 20, "p99_slack_ms": 50}}


@pytest.mark.serial  # paced load judged on p99: other tests on the cores fail its steps
async def test_the_task_page_draws_a_canary_step_by_step(
        browser: Any, console: Console, spawn: Any, http: aiohttp.ClientSession,
        hashing_model: Any, artifacts: Path) -> None:
    await hashing_model("canaried", test_service_time_ms=20)
    gateway = await start_gateway(spawn, http)
    alice = console.headers["alice"]

    async def deploy(config: dict[str, Any]) -> str:
        async with http.post(f"{console.base}/deploy", headers=alice, json={
                "embedding_model_id": "alice/canaried", "config": config}) as resp:
            assert resp.status == 202, await resp.text()
            task_id: str = (await resp.json())["task_id"]
        return task_id

    async def finished(task_id: str) -> dict[str, Any]:
        for _ in range(1200):
            async with http.get(f"{console.base}/deploy/{task_id}", headers=alice) as resp:
                task: dict[str, Any] = await resp.json()
            if task["status"] not in ("pending", "processing"):
                return task
            await asyncio.sleep(0.1)
        raise TimeoutError(task_id)

    assert (await finished(await deploy({})))["status"] == "done"
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(f"{gateway}/serve/canaried/embed", 40, 120,
                                        concurrency=100, stop=stop))
    await asyncio.sleep(1)
    task_id = await deploy({"rollout": CANARY})
    page = await open_page(browser, console, "alice")
    await page.goto(f"{console.ui}#/tasks/{task_id}")
    # While it runs: the first step's bars appear, the canary phase is the current one.
    await expect(page.locator('#rollout-chart g.rollout-candidate[data-step="0"]').first
                 ).to_be_attached(timeout=30_000)
    await expect(page.locator('#timeline g[data-phase="canary"]')).to_have_count(1)
    await page.screenshot(path=artifacts / "09-canary-running.png", full_page=True)
    task = await finished(task_id)
    stop.set()
    assert (await load).failures == []
    # The detail says why (a failed step's reasons, a refusing gate, the switch's error);
    # the rollout record holds every step's figures.
    assert task["status"] == "done", (task["detail"], task["metadata"].get("rollout"))
    await expect(page.locator("#task-status")).to_have_text("done", timeout=10_000)
    await expect(page.locator("#rollout-steps tbody tr")).to_have_count(3)
    verdicts = page.locator("#rollout-chart text.rollout-verdict")
    await expect(verdicts).to_have_text(["20 % pass", "50 % pass", "100 % pass"])
    # Two metrics x two generations x three steps.
    assert await page.locator("#rollout-chart g.rollout-bar").count() == 12
    label = await page.locator("#rollout-chart svg").get_attribute("aria-label")
    assert label is not None and "20 % pass" in label and "p99" in label
    await page.screenshot(path=artifacts / "10-canary-done.png", full_page=True)
