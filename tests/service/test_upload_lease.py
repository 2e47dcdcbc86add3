"""Review M5: an API killed mid-upload left the model at train_status in_progress for good
(deploys 409, uploads 409) and its scratch folder in `<store>/.incoming`. Now the upload
holds the model under a lease it renews while streaming; once the lease passes the model
is uploadable and deployable again, and the restarted API sweeps the scratch folder."""

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

import aiohttp
import asyncpg

from db import models
from schemas.settings import Settings
from tests.conftest import START_TIMEOUT_S, Proc
from tests.support.accounts import call, make_user
from tests.support.archives import tiny_model_archive
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

LEASE_S = 2.0



async def _start_api(spawn: Callable[..., Proc], http: aiohttp.ClientSession,
                     port: int) -> Proc:
    proc = spawn("service", api_port=port, upload_lease_s=LEASE_S)
    await wait_for_http(http, f"http://127.0.0.1:{port}/healthz", timeout_s=START_TIMEOUT_S)
    return proc


async def test_an_api_killed_mid_upload_frees_the_model_after_the_lease_and_its_scratch(
        spawn: Callable[..., Proc], pool: asyncpg.Pool, settings: Settings,
        clean: None) -> None:
    port = free_port("127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    incoming = settings.model_store_dir / ".incoming"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = await _start_api(spawn, http, port)
        _, alice = await make_user(pool, "alice")
        status, model = await call(http, "POST", f"{base}/api/v2/models", headers=alice,
                                   json={"name": "up"})
        assert status == 201, model
        streaming = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            for _ in range(600):  # 1 KiB every 0.1 s: a minute of streaming
                yield b"\0" * 1024
                streaming.set()
                await asyncio.sleep(0.1)

        async def upload() -> None:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(f"{base}/api/v2/models/alice/up/upload", headers=alice,
                                     data=slow_body()) as resp:
                    await resp.read()

        uploading = asyncio.create_task(upload())
        await streaming.wait()
        await asyncio.sleep(LEASE_S * 1.5)  # longer than one lease: the renewals keep it
        held = await models.get(pool, model["id"])
        assert held is not None and held.train_status == "in_progress"
        assert len(list(incoming.iterdir())) == 1
        api.kill(signal.SIGKILL)
        api.popen.wait()
        await uploading

        # Until the lease passes, the model is still held.
        held = await models.get(pool, model["id"])
        assert held is not None and held.train_status == "in_progress"
        await asyncio.sleep(LEASE_S + 0.5)
        await _start_api(spawn, http, port)
        assert list(incoming.iterdir()) == [], "the restarted API left the scratch folder"

        status, shown = await call(http, "GET", f"{base}/api/v2/models/alice/up", headers=alice)
        assert status == 200 and shown["train_status"] == "complete", shown
        status, task = await call(http, "POST", f"{base}/deploy", headers=alice,
                                  json={"embedding_model_id": "alice/up"})
        assert status == 202, task
        status, body = await call(http, "POST", f"{base}/api/v2/models/alice/up/upload",
                                  headers=alice, data=tiny_model_archive())
        assert status == 200 and body["train_status"] == "complete", body
        assert list(incoming.iterdir()) == []
