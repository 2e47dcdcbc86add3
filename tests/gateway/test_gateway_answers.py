"""Review M6 at the gateway, real gateway processes (Python and HAProxy engines): a request
once written to a replica is never sent again (only a failed connect goes elsewhere), and
the Python gateway buffers at most GREENROOM_GATEWAY_MAX_ANSWER_BYTES of an answer. Also
review L2: an X-Request-Id that is not ASCII is replaced, never a 500."""

import asyncio
import contextlib
import signal
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import pytest

from db import deployments, replicas
from gateway.haproxy.controller import find_haproxy
from schemas.settings import Settings
from tests.conftest import START_TIMEOUT_S, Proc, start_gateway
from tests.model_server.conftest import poll_health, start_server
from tests.support.raw_http import ask
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

NO_HAPROXY = pytest.mark.skipif(find_haproxy(Settings()) is None,
                                reason="haproxy is not installed (apt-get install haproxy)")
ENGINES = [pytest.param("python"), pytest.param("haproxy", marks=NO_HAPROXY)]


class FakeDyingReplica:
    """A fake replica (this test's own, not a model server): it reads each request whole,
    counts it, and then closes the connection, with no answer or half of one's head."""

    def __init__(self, half_answer: bool) -> None:
        self.half_answer = half_answer
        self.hits = 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.hits += 1
            if self.half_answer:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[[0.1,")
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def dying_replicas(count: int, half_answer: bool) -> AsyncIterator[list[FakeDyingReplica]]:
    fakes, servers = [], []
    for _ in range(count):
        fake = FakeDyingReplica(half_answer)
        port = free_port("127.0.0.1")
        servers.append(await asyncio.start_server(fake.handle, "127.0.0.1", port))
        fake.url = f"http://127.0.0.1:{port}"
        fakes.append(fake)
    try:
        yield fakes
    finally:
        for server in servers:
            server.close()


async def serve_from(pool: asyncpg.Pool, model_id: UUID, name: str,
                     endpoints: list[str]) -> list[UUID]:
    """The model serves from every endpoint in one generation, as a rollout leaves it;
    returns the replicas' ids."""
    _, generation = await deployments.begin_generation(pool, model_id, name)
    ids = []
    for endpoint in endpoints:
        replica_id = uuid4()
        ids.append(replica_id)
        await replicas.insert(pool, replica_id=replica_id, model_id=model_id,
                              generation=generation, task_id=None, runtime="process")
        await replicas.set_started(pool, replica_id, "test", endpoint)
    await deployments.switch(pool, model_id, generation, name, {})
    return ids


@contextlib.asynccontextmanager
async def hashing_replica(http: aiohttp.ClientSession, tmp_path: Path,
                          dimension: int = 8) -> AsyncIterator[str]:
    """A real model-server process on the hashing backend, healthy; its URL."""
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing",
                          MODEL_SERVER_DIMENSION=str(dimension))
    try:
        await poll_health(http, server)
        yield server.url
    finally:
        server.stop()


async def _start(spawn: Callable[..., Proc], http: aiohttp.ClientSession, engine: str,
                 **overrides: Any) -> str:
    if engine == "haproxy":
        return await start_gateway(spawn, http, gateway_engine="haproxy", haproxy_slots=4,
                                   **overrides)
    return await start_gateway(spawn, http, **overrides)


async def _until_routed(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    """The first answer that is not a 404 (the gateway has loaded the route)."""
    for _ in range(200):
        try:
            async with http.post(url, json=body) as resp:
                answer = resp.status, await resp.json(content_type=None)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            # HAProxy streams: the client sees the replica's half answer cut short, or, when
            # the replica gave none, a kept-alive client connection closed (so the client
            # may choose to retry; HAProxy's documented behaviour).
            answer = 0, str(exc)
        if answer[0] != 404:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never routed")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("half_answer", [False, True], ids=["no-answer", "half-an-answer"])
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_replica_that_dies_on_a_request_is_not_retried_on_another(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, engine: str, half_answer: bool) -> None:
    """Before: the gateway (up to 3 attempts) and HAProxy (`retry-on empty-response`) sent
    the same request to the next replica, so a request that kills a replica killed the
    next ones too. Now: one replica sees it, and the client gets a 502."""
    model_id = await hashing_model("dying")
    async with dying_replicas(3, half_answer) as fakes:
        await serve_from(pool, model_id, "dying", [fake.url for fake in fakes])
        base = await _start(spawn, http, engine)
        status, body = await _until_routed(http, f"{base}/serve/dying/embed", {"inputs": "x"})
        assert status == 502 or (engine == "haproxy" and status == 0), body
        assert sum(fake.hits for fake in fakes) == 1, [fake.hits for fake in fakes]


async def test_a_replica_refusing_connections_is_still_retried_on_another(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """What stays retried on the Python gateway: a failed connect (nothing was sent)."""
    model_id = await hashing_model("half-up")
    closed = [f"http://127.0.0.1:{free_port('127.0.0.1')}" for _ in range(2)]
    await _served_beside(spawn, http, pool, tmp_path, model_id, "half-up", closed)


async def _served_beside(spawn: Callable[..., Proc], http: aiohttp.ClientSession,
                         pool: asyncpg.Pool, tmp_path: Path, model_id: UUID, name: str,
                         others: list[str]) -> None:
    """Ten requests through a gateway to `name`, served from `others` and one real replica:
    each is answered 200 (the real replica takes what the others do not)."""
    async with hashing_replica(http, tmp_path) as replica:
        await serve_from(pool, model_id, name, [*others, replica])
        base = await start_gateway(spawn, http)
        for _ in range(10):
            status, body = await _until_routed(http, f"{base}/serve/{name}/embed",
                                               {"inputs": "x"})
            assert status == 200, body


class FakeResettingReplica:
    """A fake replica (this test's own): it takes each connection and resets it (an RST,
    SO_LINGER 0) without reading the request, as a replica's kernel does to connections
    still in its accept queue when it stops listening."""

    def __init__(self) -> None:
        self.resets = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        await asyncio.sleep(0.02)  # the request has reached this side
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.resets += 1
        writer.transport.abort()


@pytest.mark.timeout(120)
async def test_a_request_a_replica_reset_unread_is_sent_to_another(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """The two-node swarm's drain ended one request in 502 (CI, stop 37): a replica that
    stopped listening reset a connection the gateway had just opened. A reset before any
    byte of the answer means the replica never read the request: it goes to another."""
    model_id = await hashing_model("resetting")
    fakes = [FakeResettingReplica() for _ in range(2)]
    servers, urls = [], []
    for fake in fakes:
        port = free_port("127.0.0.1")
        servers.append(await asyncio.start_server(fake.handle, "127.0.0.1", port))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        await _served_beside(spawn, http, pool, tmp_path, model_id, "resetting", urls)
    finally:
        for server in servers:
            server.close()
    assert sum(fake.resets for fake in fakes) > 0, "no request met a resetting replica"


async def test_an_answer_over_the_gateway_cap_is_a_logged_502_not_buffered(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """Before: the gateway buffered whatever Content-Length the replica named. Now: an
    answer over GREENROOM_GATEWAY_MAX_ANSWER_BYTES is refused from its head."""
    model_id = await hashing_model("capped")
    async with hashing_replica(http, tmp_path, dimension=384) as replica:
        await serve_from(pool, model_id, "capped", [replica])
        base = await start_gateway(spawn, http, gateway_max_answer_bytes=1000)
        url = f"{base}/serve/capped"
        status, tokens = await _until_routed(http, f"{url}/tokenize", {"inputs": "ab"})
        assert status == 200 and len(tokens[0]) == 4  # a small answer passes
        status, body = await _until_routed(http, f"{url}/embed", {"inputs": "x"})  # ~4 kB
        assert status == 502, body
        assert "GREENROOM_GATEWAY_MAX_ANSWER_BYTES" in body["message"], body
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200


async def test_the_1mb_embed_all_attack_and_openai_route_meet_the_replica_budget_via_gateway(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """The review's anonymous 1 MB /serve/{name}/embed_all, and /v1/embeddings, through a
    real gateway to a real replica: 413 naming the limit (before: 200 and ~290 MB)."""
    from tests.model_server.test_request_budget import ATTACK

    model_id = await hashing_model("budget")
    async with hashing_replica(http, tmp_path, dimension=384) as replica:
        await serve_from(pool, model_id, "budget", [replica])
        base = await start_gateway(spawn, http)
        await _until_routed(http, f"{base}/serve/budget/embed", {"inputs": "x"})
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{base}/serve/budget/embed_all", data=ATTACK,
                             headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 413 and "max_request_tokens" in body["message"], body
        openai = {"model": "budget", "input": ["a " * 2000] * 256}
        async with http.post(f"{base}/v1/embeddings", json=openai) as resp:
            body = await resp.json()
            assert resp.status == 413 and "max_request_tokens" in body["message"], body
            assert body["type"] == "Validation"


async def test_a_non_ascii_request_id_is_replaced_not_a_500(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """Review L2: `X-Request-Id: €` failed the latin-1 encode of the request to the replica
    (a 500 with a traceback). Now the gateway sends a fresh id in its place."""
    model_id = await hashing_model("rid")
    async with hashing_replica(http, tmp_path) as replica:
        await serve_from(pool, model_id, "rid", [replica])
        base = await start_gateway(spawn, http)
        await _until_routed(http, f"{base}/serve/rid/embed", {"inputs": "x"})
        for value in ("€", "é" * 3, "x" * 300):
            async with http.post(f"{base}/serve/rid/embed", json={"inputs": "x"},
                                 headers={"X-Request-Id": value}) as resp:
                assert resp.status == 200, (value, await resp.text())
        async with http.post(f"{base}/v1/embeddings", json={"model": "rid", "input": "x"},
                             headers={"X-Request-Id": "€", "Accept": "€"}) as resp:
            assert resp.status == 200, await resp.text()


@pytest.mark.timeout(120)
async def test_a_stopping_gateway_answers_kept_alive_callers_each_saying_close(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """As a replica does (model_server/server.py): from SIGTERM on, the front's answers say
    `Connection: close`, and a request on an idle kept-alive connection in the next moment
    is answered so, not reset (gateway/front.py `Fronts.drain`)."""
    model_id = await hashing_model("stopping")
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8",
                          MODEL_SERVER_TEST_SERVICE_TIME_MS="300")
    try:
        await poll_health(http, server)
        await serve_from(pool, model_id, "stopping", [server.url])
        port = free_port("127.0.0.1")
        gateway = spawn("gateway.server", gateway_port=port)
        await wait_for_http(http, f"http://127.0.0.1:{port}/healthz", timeout_s=START_TIMEOUT_S)
        path = "/serve/stopping/embed"
        await _until_routed(http, f"http://127.0.0.1:{port}{path}", {"inputs": "x"})
        busy = await asyncio.open_connection("127.0.0.1", port)
        idle = await asyncio.open_connection("127.0.0.1", port)
        assert "200 OK" in await (await ask(*idle, path, "first"))  # kept alive, then idle
        in_flight = await ask(*busy, path, "in flight")
        await asyncio.sleep(0.1)
        gateway.kill(signal.SIGTERM)
        head = await in_flight
        assert head.startswith("HTTP/1.1 200") and "Connection: close" in head, head
        late = await (await ask(*idle, path, "on the idle connection, after SIGTERM"))
        assert late.startswith("HTTP/1.1 200") and "Connection: close" in late, late
        for _, writer in (busy, idle):
            writer.close()
    finally:
        server.stop()
