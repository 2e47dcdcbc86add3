"""Issue 30: the console lists a user's embed jobs with their progress (headless Chromium).

A real worker runs alice's job on hashing replicas slowed to a known capacity, so the page
shows it part-way before it ends; another user sees none of it. The API and the worker
share a state folder (the per-test `api`): the worker reads the job's input where the API
put it."""

import asyncio
import json
import time
from typing import Any

import aiohttp
from playwright.async_api import expect

from schemas.models import ModelSource
from service.domain.registration import register
from tests.console.conftest import Console, open_page
from tests.support.accounts import call

INPUTS = 3000


async def _deployed(http: aiohttp.ClientSession, console: Console) -> None:
    await register(console.pool, "alice", "corpus",
                   ModelSource(backend="hashing", dimension=32, test_service_time_ms=100,
                               test_concurrency=1), "private")
    alice = console.headers["alice"]
    status, task = await call(http, "POST", f"{console.base}/deploy", headers=alice,
                              json={"embedding_model_id": "alice/corpus"})
    assert status == 202
    deadline = time.monotonic() + 90
    while task["status"] in ("pending", "processing"):
        assert time.monotonic() < deadline, task
        await asyncio.sleep(0.1)
        _, task = await call(http, "GET", f"{console.base}/api/v2/tasks/{task['task_id']}",
                             headers=alice)
    assert task["status"] == "done", task


async def test_the_console_lists_embed_jobs_with_their_progress(
        browser: Any, console: Console, http: aiohttp.ClientSession) -> None:
    await _deployed(http, console)
    # Signed in first: on a loaded machine the sign-in alone can outlast the job (~5 s).
    page = await open_page(browser, console, "alice")
    corpus = "".join(json.dumps({"id": n, "text": f"text {n}"}) + "\n" for n in range(INPUTS))
    status, job = await call(http, "POST", f"{console.base}/api/v2/embed-jobs?model=alice/corpus",
                             data=corpus, headers={**console.headers["alice"],
                                                   "Content-Type": "application/x-ndjson"})
    assert status == 202, job
    await page.get_by_role("link", name="Embed jobs").click()
    await page.get_by_role("heading", name="Embed jobs").wait_for()
    row = page.get_by_role("row").filter(has_text=job["id"][:8])
    await expect(row).to_contain_text("alice/corpus")
    progress = row.locator(".job-progress")
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.add(int(await progress.get_attribute("data-finished") or 0))
        if INPUTS in seen:
            break
        await page.wait_for_timeout(200)
    assert any(0 < n < INPUTS for n in seen), f"progress part-way seen: {sorted(seen)}"
    await expect(row).to_contain_text("done")
    await expect(row).to_contain_text(f"{INPUTS:,} / {INPUTS:,}")
    await expect(row.get_by_role("button", name="Remove")).to_be_visible()

    stranger = await open_page(browser, console, "stranger")
    await stranger.get_by_role("link", name="Embed jobs").click()
    await expect(stranger.get_by_text("No embed jobs yet.")).to_be_visible()
