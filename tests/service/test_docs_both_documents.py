"""Issue 24, must-show 6: /docs shows both documents, the API's and the gateway's.

The page offers a selector; the gateway's document comes from the gateway's own port on the
page's host, which answers it to any origin. In headless Chromium (Debian's), choosing the
gateway lists the data plane's routes, and nothing is fetched from outside Greenroom.
"""

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import START_TIMEOUT_S, Proc, start_gateway
from tests.support.services import wait_for_http

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


async def _api_and_gateway(spawn: Callable[..., Proc],
                           http: aiohttp.ClientSession) -> tuple[str, str]:
    """A gateway, and an API that knows the gateway's port (as `greenroom up` runs them)."""
    from worker.runtimes.process import free_port

    gateway = await start_gateway(spawn, http)
    port = free_port("127.0.0.1")
    spawn("service", api_port=port, gateway_port=int(gateway.rsplit(":", 1)[1]))
    api = f"http://127.0.0.1:{port}"
    await wait_for_http(http, api + "/healthz", timeout_s=START_TIMEOUT_S)
    return api, gateway


async def test_docs_offers_both_documents_and_the_gateway_serves_its_own(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, clean: None) -> None:
    api, gateway = await _api_and_gateway(spawn, http)
    async with http.get(f"{api}/docs") as resp:
        assert resp.status == 200
        page = await resp.text()
    assert '<select id="document">' in page
    assert 'api: "/openapi.json"' in page
    assert f':{gateway.rsplit(":", 1)[1]}/openapi.json`' in page, page
    async with http.get(f"{gateway}/openapi.json",
                        headers={"Origin": api}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        doc = await resp.json()
    assert "/v1/embeddings" in doc["paths"] and "/deploy" not in doc["paths"]
    async with http.get(f"{api}/openapi.json") as resp:
        assert "/deploy" in (await resp.json())["paths"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
async def test_docs_shows_the_gateways_document_when_chosen(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, clean: None) -> None:
    from playwright.async_api import async_playwright

    api, gateway = await _api_and_gateway(spawn, http)

    async def listed(page: Any) -> set[tuple[str, str]]:
        shown = await page.eval_on_selector_all(
            ".opblock-summary", """els => els.map(e => [
                e.querySelector('.opblock-summary-method').textContent,
                e.querySelector('.opblock-summary-path').getAttribute('data-path')])""")
        return {(method, path) for method, path in shown}

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith((api, gateway)) else None)
            await page.goto(f"{api}/docs")
            await page.wait_for_selector(".opblock", timeout=30_000)
            first = await listed(page)
            await page.select_option("#document", "gateway")
            await page.wait_for_selector('[data-path="/v1/embeddings"]', timeout=30_000)
            second = await listed(page)
            await page.goto(f"{api}/docs?doc=gateway")
            await page.wait_for_selector('[data-path="/v1/embeddings"]', timeout=30_000)
            linked = await listed(page)
        finally:
            await browser.close()
    assert not outside, f"/docs fetched from elsewhere: {outside}"
    assert ("POST", "/deploy") in first and ("POST", "/v1/embeddings") not in first
    assert ("POST", "/v1/embeddings") in second and ("POST", "/deploy") not in second
    assert ("GET", "/serve/{name}/info") in second
    assert linked == second
