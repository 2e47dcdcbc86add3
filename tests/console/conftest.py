"""Console fixtures: one headless Chromium per session, users with passwords, artifacts.

Chromium is Debian's (`/usr/bin/chromium`, or GREENROOM_CHROMIUM), driven by Playwright's
async API on the suite's session event loop. Screenshots go to GREENROOM_ARTIFACTS
(default `.artifacts/console/` in the checkout, ignored by git); the path is printed.
"""

import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import REPO, Proc
from tests.support.accounts import make_user

CHROMIUM = os.environ.get("GREENROOM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PASSWORDS = {"alice": "alice-password-1", "reader": "reader-password-1",
             "stranger": "stranger-password-1"}


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        found = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield found
        await found.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("GREENROOM_ARTIFACTS") or REPO / ".artifacts") / "console"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@dataclass
class Console:
    """A running API and worker with alice (owner), reader (read grant) and stranger."""

    base: str
    pool: asyncpg.Pool
    headers: dict[str, dict[str, str]]

    @property
    def ui(self) -> str:
        return f"{self.base}/ui/"


@pytest.fixture
async def console(api: str, spawn: Callable[..., Proc], pool: asyncpg.Pool,
                  hashing_model: Any) -> Console:
    headers = {}
    for name, password in PASSWORDS.items():
        _, headers[name] = await make_user(pool, name, password=password)
    spawn("worker")
    return Console(api, pool, headers)


async def open_page(browser: Any, console: Console, user: str | None,
                    width: int = 1280, height: int = 800) -> Any:
    """A fresh browser context (own sessionStorage) on /ui, logged in through the form."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.set_default_timeout(30_000)
    await page.goto(console.ui)
    if user is not None:
        await page.get_by_label("Username").fill(user)
        await page.get_by_label("Password").fill(PASSWORDS[user])
        await page.get_by_role("button", name="Log in").click()
        await page.get_by_role("heading", name="Deployments").wait_for()
    # Survives only as long as the document does: a reload would clear it.
    await page.evaluate("window.__sameDocument = true")
    return page


async def same_document(page: Any) -> bool:
    return bool(await page.evaluate("window.__sameDocument === true"))
