"""Review M14, the model store: a per-user byte quota checked before streaming (and held
while streaming and unpacking), a floor of free space on the store's disk, and a limit on
uploads in flight per user and in all. Before, 20 parallel 2 GB uploads against 20 of one
user's models were all taken, on the disk that may hold the embedded Postgres."""

import asyncio
import io
import os
import tarfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest

from schemas.settings import Settings
from tests.conftest import START_TIMEOUT_S, Proc
from tests.support.accounts import call, make_user
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port


def _archive(weights: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in (("config.json", b"{}"), ("model.safetensors", weights)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _store_files(settings: Settings) -> list[str]:
    store = settings.model_store_dir
    return [str(p) for p in store.rglob("*") if p.is_file()] if store.exists() else []


@pytest.fixture
async def start_api(spawn: Callable[..., Proc], clean: None) -> Callable[..., Any]:
    async def _start(**overrides: Any) -> str:
        port = free_port("127.0.0.1")
        spawn("service", api_port=port, **overrides)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            await wait_for_http(http, base + "/healthz", timeout_s=START_TIMEOUT_S)
        return base
    return _start


async def _models(http: aiohttp.ClientSession, api: str, headers: dict[str, str],
                  *names: str) -> None:
    for name in names:
        status, body = await call(http, "POST", f"{api}/api/v2/models", headers=headers,
                                  json={"name": name})
        assert status == 201, body


async def test_the_store_quota_is_checked_before_streaming_and_while_unpacking(
        start_api: Callable[..., Any], pool: asyncpg.Pool, settings: Settings) -> None:
    api = await start_api(quota_store_mb=1)
    _, alice = await make_user(pool, "alice")
    weights = _archive(os.urandom(700 * 1024))  # incompressible: ~700 KB packed and unpacked
    async with aiohttp.ClientSession() as http:
        await _models(http, api, alice, "first", "second")
        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/first/upload",
                                  headers=alice, data=weights)
        assert status == 200, body
        status, usage = await call(http, "GET", f"{api}/api/v2/users/me/usage", headers=alice)
        assert usage["usage"]["store_mb"] == 1 and usage["limits"]["store_mb"] == 1, (
            usage, await pool.fetch("SELECT name, store_bytes, upload_id FROM models"))
        held = _store_files(settings)

        # A declared size past what the quota leaves: refused before a byte is read.
        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/second/upload",
                                  headers=alice, data=weights)
        assert status == 403 and body["detail"]["quota"] == "store_mb", body

        # No declared size (chunked): the archive is cut off once past the quota.
        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, len(weights), 65536):
                yield weights[at:at + 65536]

        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/second/upload",
                                  headers=alice, data=chunks())
        assert status == 413 and "store quota" in body["message"], body
        assert _store_files(settings) == held, "a refused upload left files in the store"

        # Replacing a model's own weights: what it held does not count against it.
        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/first/upload",
                                  headers=alice, data=weights)
        assert status == 200, body


async def test_an_upload_that_would_take_the_disk_below_its_floor_is_409(
        start_api: Callable[..., Any], pool: asyncpg.Pool, settings: Settings) -> None:
    api = await start_api(store_min_free_percent=100)  # no disk is ever that free
    _, alice = await make_user(pool, "alice")
    async with aiohttp.ClientSession() as http:
        await _models(http, api, alice, "m")
        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/m/upload",
                                  headers=alice, data=_archive(b"weights"))
        assert status == 409 and "free" in body["message"], body
        assert _store_files(settings) == []
        status, shown = await call(http, "GET", f"{api}/api/v2/models/alice/m", headers=alice)
        assert shown["train_status"] == "complete", shown


async def test_uploads_in_flight_are_limited_per_user_and_in_all(
        start_api: Callable[..., Any], pool: asyncpg.Pool) -> None:
    api = await start_api(upload_max_in_flight_per_user=1, upload_max_in_flight=2)
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    _, carol = await make_user(pool, "carol")
    release = asyncio.Event()
    archive = _archive(b"weights")

    async def held_open() -> AsyncIterator[bytes]:
        yield archive[:10]
        await release.wait()
        yield archive[10:]

    async with aiohttp.ClientSession() as http:
        await _models(http, api, alice, "a1", "a2")
        await _models(http, api, bob, "b1")
        await _models(http, api, carol, "c1")
        running = [asyncio.create_task(call(http, "POST", f"{api}/api/v2/models/{who}/upload",
                                            headers=headers, data=held_open()))
                   for who, headers in (("alice/a1", alice), ("bob/b1", bob))]
        for _ in range(100):
            in_flight = await pool.fetchval(
                "SELECT count(*) FROM models WHERE upload_id IS NOT NULL")
            if in_flight == 2:
                break
            await asyncio.sleep(0.05)
        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/a2/upload",
                                  headers=alice, data=archive)
        assert status == 429 and "PER_USER" in body["message"], body
        status, body = await call(http, "POST", f"{api}/api/v2/models/carol/c1/upload",
                                  headers=carol, data=archive)
        assert status == 429 and "UPLOAD_MAX_IN_FLIGHT" in body["message"], body
        release.set()
        for task in running:
            status, body = await task
            assert status == 200, body
        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/a2/upload",
                                  headers=alice, data=archive)
        assert status == 200, body
