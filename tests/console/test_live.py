"""Issue 17, must-show 3: two browser sessions follow one rollout live, without reloading.

alice (owner) and reader (read grant) each have their own browser context. Both open the
task page of a rollout alice starts at the API, and both timelines must pass through the
running phases to done; the page is never reloaded. Polling is the fallback only: while
the stream is up the page polls every 15 s, so showing "done" within a few seconds of the
API saying so is the stream's doing.
"""

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from schemas.models import ModelSource
from service.domain.registration import register
from tests.console.conftest import Console, open_page, same_document
from tests.console.test_console import _phases_seen_until_done
from tests.support.accounts import call
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

# A poll of the fallback (15 s while live) could not explain a smaller lag.
LIVE_LAG_LIMIT_S = 5.0


async def _api_done_at(http: aiohttp.ClientSession, console: Console, task_id: str) -> float:
    while True:
        _, task = await call(http, "GET", f"{console.base}/api/v2/tasks/{task_id}",
                             headers=console.headers["alice"])
        if task["status"] not in ("pending", "processing"):
            return time.monotonic()
        await asyncio.sleep(0.05)


async def _watch(page: Any) -> tuple[list[str], float]:
    seen = await _phases_seen_until_done(page)
    return seen, time.monotonic()


@pytest.mark.serial  # asserts the lag between the API and the page (LIVE_LAG_LIMIT_S)
async def test_two_sessions_follow_one_rollout(browser: Any, console: Console,
                                               http: aiohttp.ClientSession,
                                               artifacts: Path) -> None:
    await register(console.pool, "alice", "watched",
                   ModelSource(backend="hashing", dimension=384, startup_delay_s=2.0), "private")
    await call(http, "PUT", f"{console.base}/api/v2/models/alice/watched/permissions",
               json={"username": "reader", "permission": "read"},
               headers=console.headers["alice"])
    pages = [await open_page(browser, console, who) for who in ("alice", "reader")]
    for page in pages:
        await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    status, task = await call(http, "POST", f"{console.base}/deploy",
                              json={"embedding_model_id": "alice/watched"},
                              headers=console.headers["alice"])
    assert status == 202
    for page in pages:
        await page.evaluate(f"location.hash = '#/tasks/{task['task_id']}'")
    (alice, reader), done_at = await asyncio.gather(
        asyncio.gather(*(_watch(p) for p in pages)),
        _api_done_at(http, console, task["task_id"]))
    lags = [round(seen_at - done_at, 2) for _, seen_at in (alice, reader)]
    print(f"phases seen running: alice {alice[0]}, reader {reader[0]}; "
          f"'done' shown {lags} s after the API (limit {LIVE_LAG_LIMIT_S} s)")
    for seen, _ in (alice, reader):
        assert "health_checking" in seen, seen
    assert max(lags) < LIVE_LAG_LIMIT_S
    for i, page in enumerate(pages):
        await expect(page.locator("#task-status")).to_have_text("done")
        assert await same_document(page)
        await page.screenshot(path=artifacts / f"20-session-{i + 1}-task.png", full_page=True)
        await page.context.close()


async def test_usable_by_keyboard_and_on_a_phone(browser: Any, console: Console,
                                                 http: aiohttp.ClientSession,
                                                 artifacts: Path) -> None:
    await register(console.pool, "alice", "pocket", ModelSource(backend="hashing"), "private")
    page = await open_page(browser, console, None, width=390, height=844)
    assert await page.evaluate("document.activeElement.name") == "username"
    await page.keyboard.type("alice")
    await page.keyboard.press("Tab")
    await page.keyboard.type("alice-password-1")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Deployments")).to_be_visible()
    await page.evaluate("document.activeElement.blur()")
    focused = []
    for _ in range(4):  # skip link, brand, then the main navigation
        await page.keyboard.press("Tab")
        focused.append(await page.evaluate("document.activeElement.textContent"))
    assert focused == ["Skip to content", "Greenroom", "Deployments", "Models"], focused
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("cell", name="alice/pocket")).to_be_visible()
    unlabeled = await page.evaluate("""() => [...document.querySelectorAll('input, select')]
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
        .map((el) => el.name)""")
    assert unlabeled == []
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone"
    await page.get_by_role("button", name="Deploy pocket…").focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog")).to_be_visible()
    await page.screenshot(path=artifacts / "30-phone-deploy-dialog.png")
    await page.keyboard.press("Escape")
    await expect(page.get_by_role("dialog")).to_have_count(0)
    await page.screenshot(path=artifacts / "31-phone-models.png", full_page=True)

    # Register through the form, then grant a reader through the permissions panel.
    await page.get_by_text("Register a model").click()
    await page.get_by_label("Name", exact=True).fill("pocket-two")
    await page.get_by_label("Backend").select_option("hashing")
    await page.get_by_label("Access level").select_option("protected")
    await page.get_by_role("button", name="Register").click()
    await expect(page.get_by_role("cell", name="alice/pocket-two")).to_be_visible()
    await page.get_by_role("button", name="Permissions of pocket-two").click()
    await page.get_by_label("Username").fill("reader")
    await page.get_by_role("button", name="Grant").click()
    await expect(page.get_by_role("button", name="Revoke reader")).to_be_visible()
    _, grants = await call(http, "GET", f"{console.base}/api/v2/models/alice/pocket-two/"
                           "permissions", headers=console.headers["alice"])
    assert [(g["username"], g["permission"]) for g in grants] == [("reader", "read")]
    await page.context.close()


async def test_api_stops_promptly_with_a_stream_open(
        spawn: Any, http: aiohttp.ClientSession, pool: Any, clean: None) -> None:
    from tests.support.accounts import make_user
    from tests.support.services import wait_for_http
    from worker.runtimes.process import free_port

    _, headers = await make_user(pool, "watcher")
    port = free_port("127.0.0.1")
    proc = spawn("service", api_port=port)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(http, base + "/healthz")
    async with http.get(f"{base}/api/v2/changes", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"retry:")
        started = time.monotonic()
        proc.stop()  # SIGTERM, then waits
        stopped_s = time.monotonic() - started
    print(f"API stopped {stopped_s:.2f} s after SIGTERM with a change stream open")
    assert proc.popen.returncode == 0
    assert stopped_s < 5, "an open stream held the API's shutdown"
