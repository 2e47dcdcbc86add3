"""Issue 17, must-show 2: read-only users and anonymous visitors see what they may.

Checked twice: in the browser (no write buttons, no private rows, no secret on any page)
and at the API (the same writes refused, the same reads refused or filtered, the change
stream filtered by read access).
"""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import expect

from schemas.models import ModelSource
from schemas.settings import Settings
from service.domain.registration import register
from tests.console.conftest import Console, open_page
from tests.support.accounts import call, replica_environs
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

ENV_SECRET = "env-value-never-shown-7731"
GENAI_SECRET = "genai-key-never-shown-4410"


async def _done(http: aiohttp.ClientSession, console: Console, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        _, task = await call(http, "GET", f"{console.base}/api/v2/tasks/{task_id}",
                             headers=console.headers["alice"])
        if task["status"] not in ("pending", "processing"):
            return dict(task)
        await asyncio.sleep(0.1)
    raise TimeoutError(task_id)


async def _private_deployment(http: aiohttp.ClientSession, console: Console) -> str:
    """alice/private-model deployed with an env value and a genai_key; reader may read it."""
    await register(console.pool, "alice", "private-model",
                   ModelSource(backend="hashing", dimension=384), "private")
    alice = console.headers["alice"]
    status, _ = await call(http, "PUT", f"{console.base}/api/v2/models/alice/private-model/"
                           "permissions", json={"username": "reader", "permission": "read"},
                           headers=alice)
    assert status == 200
    status, _ = await call(http, "POST", f"{console.base}/api/v1/deploy/run", headers=alice,
                           json={"model_identifier": "alice/private-model",
                                 "genai_key": GENAI_SECRET})
    assert status == 202
    _, first = await call(http, "GET", f"{console.base}/deploy-status/alice/private-model",
                          headers=alice)
    assert (await _done(http, console, first["task_id"]))["status"] == "done"
    status, task = await call(http, "POST", f"{console.base}/deploy", headers=alice, json={
        "embedding_model_id": "alice/private-model",
        "config": {"env": {"API_TOKEN": ENV_SECRET}}})
    assert status == 202
    assert (await _done(http, console, task["task_id"]))["status"] == "done"
    return str(task["task_id"])


async def _page_text(page: Any) -> str:
    return str(await page.content())


async def _api_as(http: aiohttp.ClientSession, console: Console, who: str | None,
                  task_id: str) -> dict[str, int]:
    headers = console.headers[who] if who else {}
    base = console.base
    probes = {
        "list": ("GET", "/api/v2/deployments", None),
        "show": ("GET", "/api/v2/deployments/alice/private-model", None),
        "task": ("GET", f"/api/v2/tasks/{task_id}", None),
        "logs": ("GET", "/api/v2/deployments/alice/private-model/replica-logs", None),
        "deploy": ("POST", "/deploy", {"embedding_model_id": "alice/private-model"}),
        "delete": ("POST", "/delete", {"embedding_model_id": "alice/private-model"}),
        "scale": ("POST", "/api/v2/deploy/alice/private-model/scale", {"replicas": 2}),
    }
    found = {}
    for name, (method, path, body) in probes.items():
        status, _ = await call(http, method, base + path, json=body, headers=headers)
        found[name] = status
    return found


async def test_read_only_stranger_and_anonymous_see_only_what_they_may(
        browser: Any, console: Console, http: aiohttp.ClientSession, settings: Settings,
        artifacts: Path) -> None:
    task_id = await _private_deployment(http, console)
    job_tokens = [e["GREENROOM_JOB_TOKEN"] for e in replica_environs(settings.state_dir)]
    assert job_tokens and all(job_tokens)
    secrets = [ENV_SECRET, GENAI_SECRET, *job_tokens]

    # At the API: the reader reads but cannot write; others read nothing.
    assert await _api_as(http, console, "reader", task_id) == {
        "list": 200, "show": 200, "task": 200, "logs": 200,
        "deploy": 403, "delete": 403, "scale": 403}
    # A stranger cannot tell the private model from a missing one (review L1): 404.
    assert await _api_as(http, console, "stranger", task_id) == {
        "list": 200, "show": 404, "task": 404, "logs": 404,
        "deploy": 404, "delete": 404, "scale": 404}
    assert await _api_as(http, console, None, task_id) == {
        "list": 401, "show": 401, "task": 401, "logs": 401,
        "deploy": 401, "delete": 401, "scale": 401}
    _, listed = await call(http, "GET", f"{console.base}/api/v2/deployments",
                           headers=console.headers["stranger"])
    assert listed == []
    for who in ("alice", "reader"):
        for path in ("/api/v2/deployments", "/api/v2/deployments/alice/private-model",
                     f"/api/v2/tasks/{task_id}"):
            _, body = await call(http, "GET", console.base + path, headers=console.headers[who])
            text = json.dumps(body)
            assert not [s for s in secrets if s in text], path

    # In the browser, the reader: the deployment, its logs, and no write button.
    page = await open_page(browser, console, "reader")
    await expect(page.get_by_role("link", name="private-model")).to_be_visible()
    await page.get_by_role("link", name="private-model").click()
    await expect(page.get_by_text("API_TOKEN (values hidden)")).to_be_visible()
    await expect(page.locator("details[data-replica] pre")).not_to_be_empty()
    await expect(page.get_by_role("button", name="Redeploy…")).to_have_count(0)
    await expect(page.get_by_role("button", name="Delete…")).to_have_count(0)
    await expect(page.get_by_role("button", name="Scale…")).to_have_count(0)
    await page.screenshot(path=artifacts / "10-reader-deployment.png", full_page=True)
    assert not [s for s in secrets if s in await _page_text(page)]
    await page.get_by_role("link", name="Models").click()
    await expect(page.get_by_role("cell", name="alice/private-model")).to_be_visible()
    await expect(page.get_by_role("button", name="Deploy private-model…")).to_have_count(0)
    await expect(page.get_by_role("button", name="Permissions of private-model")).to_have_count(0)
    await expect(page.get_by_role("button", name="Upload files of private-model…")).to_have_count(0)
    await page.goto(f"{console.ui}#/tasks/{task_id}")
    await expect(page.locator("#task-status")).to_have_text("done")
    assert not [s for s in secrets if s in await _page_text(page)]
    await page.context.close()

    # The stranger: an empty list, and the deployment answered as a missing one.
    page = await open_page(browser, console, "stranger")
    await expect(page.get_by_text("No deployments yet")).to_be_visible()
    await page.goto(f"{console.ui}#/deployments/alice/private-model")
    await expect(page.get_by_role("alert")).to_contain_text("not found")
    await page.screenshot(path=artifacts / "11-stranger-refused.png")
    assert "API_TOKEN" not in await _page_text(page)
    await page.context.close()

    # Anonymous: the login form and nothing else, wherever the link points.
    page = await open_page(browser, console, None)
    await page.goto(f"{console.ui}#/deployments/alice/private-model")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await expect(page.get_by_role("navigation")).to_be_hidden()
    text = await _page_text(page)
    assert "private-model" not in text.split("</header>")[1]
    await page.context.close()


async def _stream_events(http: aiohttp.ClientSession, url: str, headers: dict[str, str],
                         out: list[dict[str, Any]], ready: asyncio.Event) -> None:
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
                if event == "hello":
                    ready.set()
            elif line.startswith("data: ") and event == "change":
                out.append(json.loads(line[6:]))


async def test_change_stream_needs_a_token_and_sends_only_readable_changes(
        console: Console, http: aiohttp.ClientSession) -> None:
    url = f"{console.base}/api/v2/changes"
    async with http.get(url) as resp:
        assert resp.status == 401 and (await resp.json())["status_code"] == 401
    async with http.get(url, headers={"Authorization": "Bearer not-a-token"}) as resp:
        assert resp.status == 401
    for bad in ("0", "301", "soon"):
        async with http.get(f"{url}?timeout={bad}", headers=console.headers["reader"]) as resp:
            assert resp.status == 422 and (await resp.json())["status_code"] == 422
    started = time.monotonic()
    async with http.get(f"{url}?timeout=0.5", headers=console.headers["reader"]) as resp:
        assert b"event: hello" in await resp.read()
    assert time.monotonic() - started < 5, "the stream ends at its timeout"
    await register(console.pool, "alice", "streamed", ModelSource(backend="hashing"), "private")
    await call(http, "PUT", f"{console.base}/api/v2/models/alice/streamed/permissions",
               json={"username": "reader", "permission": "read"},
               headers=console.headers["alice"])
    seen: dict[str, list[dict[str, Any]]] = {"reader": [], "stranger": []}
    ready = {who: asyncio.Event() for who in seen}
    streams = [asyncio.create_task(_stream_events(http, url, console.headers[who], seen[who],
                                                  ready[who])) for who in seen]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready.values())), 10)
        _, task = await call(http, "POST", f"{console.base}/deploy",
                             json={"embedding_model_id": "alice/streamed"},
                             headers=console.headers["alice"])
        assert (await _done(http, console, task["task_id"]))["status"] == "done"
        await asyncio.sleep(0.5)
    finally:
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    mine = [c for c in seen["reader"] if c.get("task_id") == task["task_id"]
            and c["kind"] == "task"]
    statuses = [c["status"] for c in mine]
    print(f"reader's stream, task changes: {[(c['status'], c['phase']) for c in mine]}")
    assert statuses[0] == "pending" and statuses[-1] == "done" and "processing" in statuses
    assert {"health_checking", "switching"} <= {c["phase"] for c in mine}
    assert {"deployment", "replica", "event"} <= {c["kind"] for c in seen["reader"]}
    assert seen["stranger"] == []


async def _read_events(resp: aiohttp.ClientResponse, out: list[tuple[str, str]],
                       ready: asyncio.Event) -> None:
    event = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
            if event == "hello":
                ready.set()
        elif line.startswith("data: "):
            out.append((event, line[6:]))


async def test_change_stream_ends_when_its_key_is_revoked_and_drops_a_revoked_grant(
        api: str, http: aiohttp.ClientSession, pool: Any) -> None:
    """Review finding 6: the stream's caller is checked again on every access change: a
    revoked API key's stream ends at once (not at its timeout), and a revoked grant stops
    the changes of that model at once (not after a 5 s cache)."""
    from tests.support.accounts import make_user

    _, alice = await make_user(pool, "alice")
    _, reader = await make_user(pool, "reader")
    await register(pool, "alice", "guarded", ModelSource(backend="hashing"), "private")
    await call(http, "PUT", f"{api}/api/v2/models/alice/guarded/permissions",
               json={"username": "reader", "permission": "read"}, headers=alice)
    status, key = await call(http, "POST", f"{api}/api/v2/auth/api-keys", headers=reader,
                             json={"name": "stream"})
    assert status == 201, key
    by_key = {"Authorization": f"Bearer {key['key']}"}
    seen: dict[str, list[tuple[str, str]]] = {"key": [], "jwt": []}
    ready = {who: asyncio.Event() for who in seen}
    responses = {}
    for who, headers in (("key", by_key), ("jwt", reader)):
        responses[who] = await http.get(f"{api}/api/v2/changes?timeout=60", headers=headers)
    readers = {who: asyncio.create_task(_read_events(resp, seen[who], ready[who]))
               for who, resp in responses.items()}
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready.values())), 10)
        status, _ = await call(http, "POST", f"{api}/deploy", headers=alice,
                               json={"embedding_model_id": "alice/guarded"})
        assert status == 202
        for _ in range(200):  # at most 10 s
            if any(e == "change" for e, _ in seen["jwt"]):
                break
            await asyncio.sleep(0.05)
        assert any(e == "change" for e, _ in seen["jwt"]), seen

        revoked_at = time.monotonic()
        status, _ = await call(http, "DELETE", f"{api}/api/v2/auth/api-keys/{key['id']}",
                               headers=reader)
        assert status in (200, 204)
        await asyncio.wait_for(readers["key"], 5)
        ended_s = time.monotonic() - revoked_at
        print(f"revoked key's stream ended {ended_s:.2f} s after the revocation (limit 5 s)")
        assert seen["key"][-1][0] == "unauthorized", seen["key"]

        status, _ = await call(http, "DELETE",
                               f"{api}/api/v2/models/alice/guarded/permissions/reader",
                               headers=alice)
        assert status in (200, 204)
        await asyncio.sleep(0.3)  # the auth message reaches the API
        before = len(seen["jwt"])
        status, _ = await call(http, "POST", f"{api}/delete", headers=alice,
                               json={"embedding_model_id": "alice/guarded"})
        assert status == 202
        await asyncio.sleep(1.0)
        assert [e for e, _ in seen["jwt"][before:] if e == "change"] == [], seen["jwt"][before:]
    finally:
        for task in readers.values():
            task.cancel()
        await asyncio.gather(*readers.values(), return_exceptions=True)
        for resp in responses.values():
            resp.close()


async def test_pages_are_static_files_with_strict_headers(api: str,
                                                          http: aiohttp.ClientSession) -> None:
    async with http.get(f"{api}/ui", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    async with http.get(f"{api}/ui/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        page = await resp.text()
    assert "/ui/static/app.js" in page and "http" not in page.split("<body>")[0]
    async with http.get(f"{api}/ui/static/app.js") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
    for path in ("/ui/static/missing.js", "/ui/static/%2e%2e/routes.py",
                 "/ui/static/../../db/pool.py"):
        async with http.get(api + path) as resp:
            assert resp.status == 404, path
            assert (await resp.json())["status_code"] == 404
