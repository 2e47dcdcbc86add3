"""Review finding 2: an embed job waits out a replica's back-pressure instead of failing.

A real model-server app (the hashing backend, its compute held by a gate so the batch
lane stays full as long as the test says) answers the job's batches 429; the batch waits,
spends none of its tries on them, the job sends fewer batches at once, and the batch is
embedded once the lane drains. A replica refusing the worker's secret (401) fails the job
instead of giving every input an error line."""

import asyncio
import re
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from model_server.app import create_app
from schemas import replica_auth
from schemas.task_payloads import EmbedPayload
from tests.model_server.conftest import GatedEmbedder, GatedLoader, hashing_settings
from worker import embed_job
from worker.embed_job import Batch, Item, JobFailed, Replicas

HOST = "127.0.0.1"


def _loaded() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def _pool(endpoint: str, window: int = 8) -> Replicas:
    """The job's replica pool, pointed at `endpoint` (no database: back-pressure and a
    refused secret never look the replicas up again)."""
    ctx: Any = SimpleNamespace(settings=SimpleNamespace(secret_key=None))
    job: Any = SimpleNamespace(model_id="alice/m", generation=1)
    pool = Replicas(ctx, job)
    pool.endpoints = [endpoint]
    pool.limit = pool.allowed = window
    pool.refreshed = 0  # type: ignore[attr-defined]

    async def refresh() -> None:  # counted: a busy replica is no reason to look again
        pool.refreshed += 1  # type: ignore[attr-defined]

    pool.refresh = refresh  # type: ignore[method-assign]
    return pool


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(embedder: GatedEmbedder, **settings: Any) -> str:
        app = create_app(hashing_settings(**settings), GatedLoader(embedder, _loaded()))
        test_server = TestServer(app, host=HOST)
        await test_server.start_server()
        servers.append(test_server)
        url = f"http://{HOST}:{test_server.port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(500):
                async with http.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return url
                await asyncio.sleep(0.01)
        raise AssertionError("the model server never became healthy")

    yield start
    for test_server in servers:
        await test_server.close()


async def _refused(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    found = re.search(r'model_server_requests_total\{route="/embed",status="429"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


async def test_a_full_batch_lane_is_waited_out_without_spending_tries(
        server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed_job, "RETRIES", 2)
    monkeypatch.setattr(embed_job, "BACKPRESSURE_WAIT_S", 0.05)
    embedder = GatedEmbedder(dimension=64)
    url = await server(embedder, max_batch_size=1, queue_limit=4, max_client_batch_size=4)
    pool = _pool(url)
    async with aiohttp.ClientSession() as http:
        embedder.hold = True
        computing = asyncio.create_task(http.post(f"{url}/embed", json={"inputs": "held"}))
        assert await asyncio.to_thread(embedder.computing.wait, 5)
        queued = asyncio.create_task(http.post(f"{url}/embed",
                                               json={"inputs": ["a", "b", "c", "d"]}))
        await asyncio.sleep(0.1)  # the lane is full: 4 of 4
        batch = Batch([Item("x", text="one input"), Item("y", text="and another")], 0)
        job = asyncio.create_task(embed_job.embed_batch(http, pool, batch,
                                                        EmbedPayload(generation=1)))
        for _ in range(500):
            if await _refused(http, url) >= 6:
                break
            await asyncio.sleep(0.01)
        refused = await _refused(http, url)
        assert refused >= 6, "the batch met back-pressure more times than it has tries"
        assert not job.done(), "still waiting, not failed"
        assert pool.allowed == 1, "the job sends fewer batches while pushed back"
        assert pool.refreshed == 0, "a busy replica is still the generation's replica"
        embedder.release.set()
        done = await asyncio.wait_for(job, 10)
        for request in (computing, queued):
            (await request).release()
    assert done.embedded == 2
    assert [line[:22] for line in done.lines] == [b'{"id":"x","embedding":',
                                                  b'{"id":"y","embedding":']
    assert pool.allowed == 2, "each batch a replica took lets one more go"


async def test_a_refused_secret_fails_the_job(server: Any) -> None:
    url = await server(GatedEmbedder(dimension=64), gateway_secret=SecretStr("right"))
    pool = _pool(url)
    pool.headers[replica_auth.HEADER] = "wrong"
    batch = Batch([Item("x", text="one input")], 0)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(JobFailed, match=r"refused the worker's credentials \(401"):
            await embed_job.embed_batch(http, pool, batch, EmbedPayload(generation=1))
