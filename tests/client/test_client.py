"""Must-show 3: the Python client against a running API: every CLI command's call, typed
answers, and retries of 503 answers as their Retry-After says."""

import asyncio
import itertools
import time
from typing import Any

import pytest
from aiohttp import web

from greenroom_client import ApiError, AsyncClient, Client, TaskFailed, Unreachable
from schemas.auth import ApiKeyCreated, ApiKeyOut, LoginResponse, ModelOut, UserOut
from schemas.bazaar import ReplicaLogs, StatusResponse
from schemas.models import ModelSource
from schemas.tasks import DeploymentConfig, TaskResponse
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)
from worker.runtimes.process import free_port

HASHING = ModelSource(backend="hashing", dimension=384)


def _every_call(gr: Client, password: str) -> None:
    """Each call the CLI makes, in the order a user would make them."""
    assert isinstance(gr.login("admin", password), LoginResponse) and gr.token
    assert isinstance(gr.me(), UserOut) and gr.me().username == "admin"
    model = gr.register_model("typed", HASHING, "public")
    assert isinstance(model, ModelOut) and model.identifier == "admin/typed"
    assert [m.identifier for m in gr.list_models()] == ["admin/typed"]
    assert gr.show_model("admin/typed").id == model.id

    task = gr.deploy("admin/typed", DeploymentConfig(replicas=2))
    assert isinstance(task, TaskResponse) and task.status == "pending"
    seen: list[str] = []
    done = gr.wait(task, 90, 0.1, on_update=lambda t: seen.append(f"{t.status}:{t.phase}"))
    assert done.status == "done" and done.metadata["replicas_wanted"] == 2
    assert done.metadata["replicas_ready"] == 2
    assert any(s.startswith("processing") for s in seen), seen
    assert gr.task(str(task.task_id)).status == "done"
    assert gr.latest_task("admin/typed").task_id == task.task_id
    status = gr.status("admin/typed")
    assert isinstance(status, StatusResponse) and status.status == "complete"
    logs = gr.logs("admin/typed")
    assert len(logs) == 2 and all(isinstance(r, ReplicaLogs) for r in logs)
    vectors = gr.embed("typed", ["a", "b"])
    assert len(vectors) == 2 and len(vectors[0]) == 384

    key = gr.create_key("ci", expires_in_days=1)
    assert isinstance(key, ApiKeyCreated) and key.key.startswith("gr_")
    assert [k.name for k in gr.list_keys()] == ["ci"]
    assert all(isinstance(k, ApiKeyOut) for k in gr.list_keys())
    with Client(gr.base_url, key.key) as by_key:
        assert by_key.me().username == "admin"
    gr.revoke_key(key.id)
    with Client(gr.base_url, key.key) as revoked, pytest.raises(ApiError) as denied:
        revoked.me()
    assert denied.value.status == 401

    scaled = gr.wait(gr.scale("admin/typed", 3), 60, 0.1)
    assert (scaled.kind, scaled.status) == ("scale", "done")
    assert scaled.metadata["replicas_current"] == 3
    deleted = gr.wait(gr.delete("admin/typed"), 60, 0.1)
    assert deleted.status == "done" and deleted.kind == "delete"


async def test_sync_client_makes_every_cli_call(stack: str, gateway: str,
                                               admin_password: str) -> None:
    with Client(stack, gateway_url=gateway) as gr:
        await asyncio.to_thread(_every_call, gr, admin_password)


async def test_async_client_errors_are_typed(stack: str, admin_password: str) -> None:
    async with AsyncClient(stack) as gr:
        with pytest.raises(ApiError) as no_token:
            await gr.list_models()
        assert no_token.value.status == 401 and no_token.value.message
        await gr.login("admin", admin_password)
        with pytest.raises(ApiError) as missing:
            await gr.show_model("admin/nothing")
        assert missing.value.status == 404
        await gr.register_model("slow", ModelSource(backend="hashing", dimension=384,
                                                    startup_delay_s=600), "public")
        task = await gr.deploy("admin/slow", DeploymentConfig(deploy_timeout_s=1))
        with pytest.raises(TaskFailed) as failed:
            await gr.wait(task, 60, 0.1)
        assert failed.value.task.status == "failed"
        assert "did not become healthy" in (failed.value.task.detail or "")
    async with AsyncClient(f"http://127.0.0.1:{free_port('127.0.0.1')}") as nobody:
        with pytest.raises(Unreachable):
            await nobody.list_models()


async def _flaky_front(api: str, refusals: int, retry_after: str) -> tuple[web.AppRunner, str,
                                                                          list[float]]:
    """A fake front (named so) for the real API: answers the first `refusals` requests 503
    with Retry-After, as a proxy under load would, then forwards to the real API."""
    import aiohttp

    seen: list[float] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(time.monotonic())
        if len(seen) <= refusals:
            return web.json_response({"status_code": 503, "message": "busy", "detail": None},
                                     status=503, headers={"Retry-After": retry_after})
        async with aiohttp.ClientSession() as http, http.request(
                request.method, api + request.path_qs, data=await request.read(),
                headers={k: v for k, v in request.headers.items()
                         if k in ("Authorization", "Content-Type")}) as resp:
            return web.Response(body=await resp.read(), status=resp.status,
                                content_type=resp.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", seen


async def test_retries_503_as_retry_after_says(stack: str, admin_password: str) -> None:
    runner, front, seen = await _flaky_front(stack, refusals=2, retry_after="1")
    try:
        async with AsyncClient(front, retries=3) as gr:
            answer = await gr.login("admin", admin_password)
        assert isinstance(answer, LoginResponse) and answer.user.username == "admin"
        assert len(seen) == 3
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        assert all(0.95 <= gap < 3 for gap in gaps), gaps
        seen.clear()
        async with AsyncClient(front, retries=1) as impatient:
            with pytest.raises(ApiError) as refused:
                await impatient.login("admin", admin_password)
        assert refused.value.status == 503 and len(seen) == 2, "one retry, then the 503"
    finally:
        await runner.cleanup()


def test_retry_after_reads_seconds_and_dates() -> None:
    from email.utils import formatdate

    import httpx

    from greenroom_client.client import MAX_RETRY_WAIT_S, retry_after

    def wait(header: dict[str, Any], attempt: int = 0) -> float:
        return retry_after(httpx.Response(503, headers=header), attempt)

    assert wait({"Retry-After": "2"}) == 2.0
    assert 3 <= wait({"Retry-After": formatdate(time.time() + 5, usegmt=True)}) <= 5
    assert wait({"Retry-After": "100000"}) == MAX_RETRY_WAIT_S
    assert wait({}, attempt=2) == 2.0, "backoff 0.5 * 2**attempt without the header"


def test_logs_follow_prints_only_lines_past_the_sliding_tail() -> None:
    from launch.cli_api import _new_lines

    assert _new_lines([], ["a", "b"]) == ["a", "b"]
    assert _new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert _new_lines(["a", "b"], ["a", "b"]) == []
    assert _new_lines(["x"], ["a", "b"]) == ["a", "b"], "a restarted replica: all of it"
