"""Must-show 5: /docs renders in headless Chromium (Debian's) from the files the package
ships, with every route of the API listed; the seed routes are found by name."""

import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.openapi import _PARAM
from edge.routes import ROUTE_TABLE
from service.api.docs import STATIC
from service.app import create_app
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Seed 002's six routes and seed 001's Bazaar v2 deploy routes, as the seeds name them.
SEED_ROUTES = [
    ("POST", "/deploy"), ("GET", "/deploy/{task_id}"),
    ("GET", "/deploy-status/{embedding_model_id}"), ("POST", "/delete"),
    ("GET", "/delete/{task_id}"), ("GET", "/delete-status/{embedding_model_id}"),
    ("POST", "/api/v2/deploy/{model_id}"), ("DELETE", "/api/v2/deploy/{model_id}"),
    ("GET", "/api/v2/deploy/{model_id}/status"), ("GET", "/api/v2/deploy/{model_id}/logs"),
]


def test_the_swagger_ui_files_ship_in_the_package() -> None:
    assert (STATIC / "swagger-ui-bundle.js").stat().st_size > 500_000
    assert (STATIC / "swagger-ui.css").exists() and (STATIC / "LICENSE").exists()
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"static/swagger-ui/*"' in pyproject, "package data, so an install carries them"


async def test_openapi_has_examples_and_errors(api: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{api}/openapi.json") as resp:
        doc: dict[str, Any] = await resp.json()
    deploy = doc["paths"]["/deploy"]["post"]
    assert deploy["requestBody"]["content"]["application/json"]["example"]["model_id"]
    assert deploy["responses"]["202"]["content"]["application/json"]["example"]["task_id"]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            assert op["summary"], (method, path)
            assert {"401", "404", "422"} <= set(op["responses"]), (method, path)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
async def test_docs_render_in_headless_chromium_with_every_route(
        api: str, settings: Any) -> None:
    from playwright.async_api import async_playwright

    routes = [(s.method, _PARAM.sub(r"{\1}", s.path))
              for s in create_app(settings)[ROUTE_TABLE]]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith(api) else None)
            await page.goto(f"{api}/docs")
            await page.wait_for_selector(".opblock", timeout=30_000)
            shown = await page.eval_on_selector_all(
                ".opblock-summary", """els => els.map(e => [
                    e.querySelector('.opblock-summary-method').textContent,
                    e.querySelector('.opblock-summary-path').getAttribute('data-path'),
                    (e.querySelector('.opblock-summary-description') || {}).textContent])""")
        finally:
            await browser.close()
    listed = {(method, path) for method, path, _ in shown}
    assert not outside, f"/docs fetched from elsewhere: {outside}"
    for route in SEED_ROUTES:
        assert route in listed, route
    assert set(routes) <= listed, set(routes) - listed
    described = {(m, p): d for m, p, d in shown}
    assert described[("POST", "/deploy")] == "Create a deploy task"
