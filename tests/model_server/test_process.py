"""``python -m model_server`` as replicas run it: readiness, SIGTERM, exit codes."""

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.raw_http import ask

from .conftest import HOST, ServerProcess, poll_health, start_server

# The SIGTERM test ends the shared replica, so it comes last in this module.


@pytest.fixture(scope="module")
async def real_replica(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ServerProcess, list[int]]]:
    """The real model in a subprocess, with the /health statuses seen while it started
    (torch loads it in seconds alone, in minutes on a machine whose cores are all busy)."""
    server = start_server(tmp_path_factory.mktemp("replica"))
    try:
        async with aiohttp.ClientSession() as session:
            seen = await poll_health(session, server, within_s=180)
        yield server, seen
    finally:
        server.stop()


def _events(server: ServerProcess) -> list[str]:
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    return [json.loads(line)["event"] for line in lines]


async def _exit_code(server: ServerProcess, within_s: float = 30) -> int:
    return await asyncio.to_thread(server.process.wait, within_s)


async def test_health_is_503_until_the_model_is_warm_then_200(
    real_replica: tuple[ServerProcess, list[int]],
) -> None:
    server, seen = real_replica
    assert seen[0] == 503, seen
    assert seen[-1] == 200
    events = _events(server)
    assert events.index("server_started") < events.index("model_ready")
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{server.url}/embed", json={"inputs": "hello"})
        assert len((await response.json())[0]) == 384


async def _in_flight(session: aiohttp.ClientSession, server: ServerProcess) -> float:
    async with session.get(f"{server.url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("model_server_requests_in_flight "):
                return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


async def _until_in_flight(session: aiohttp.ClientSession, server: ServerProcess) -> None:
    for _ in range(500):
        if await _in_flight(session, server) >= 2:  # the /metrics request itself is one
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the request never reached the server")


async def _until_refused(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except ConnectionRefusedError:
            return
        writer.close()
        await asyncio.sleep(0.01)
    raise AssertionError("the server kept accepting connections after SIGTERM")


async def _post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json()


async def test_sigterm_finishes_the_in_flight_request_then_exits_0(
    real_replica: tuple[ServerProcess, list[int]],
) -> None:
    server, _ = real_replica
    long_inputs = [f"{i} " + "word " * 300 for i in range(32)]  # ~2 s of compute
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/embed"
        request = asyncio.create_task(_post(session, url, {"inputs": long_inputs}))
        await _until_in_flight(session, server)
        server.terminate()
        await _until_refused(server.port)
        assert not request.done(), "the request finished before the listener closed"
        status, vectors = await request
    assert status == 200
    assert len(vectors) == 32 and len(vectors[0]) == 384
    assert await _exit_code(server) == 0
    assert _events(server)[-2:] == ["shutdown_started", "shutdown_complete"]


async def test_a_missing_model_directory_exits_1_with_a_clear_log_line(tmp_path: Path) -> None:
    server = start_server(tmp_path, MODEL_SERVER_MODEL=str(tmp_path / "missing"))
    try:
        assert await _exit_code(server) == 1
    finally:
        server.stop()
    failure = next(line for line in server.log().splitlines() if "model_load_failed" in line)
    assert f"model directory not found: {tmp_path / 'missing'}" in json.loads(failure)["error"]


async def test_a_failed_preload_exits_1_with_the_same_log_line(tmp_path: Path) -> None:
    """An onnx replica of a prepared export loads on the preload thread (issue 28): its
    failure reaches the app's load and ends the server as any failed load does."""
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="onnx",
                          MODEL_SERVER_MODEL=str(tmp_path / "missing"),
                          MODEL_SERVER_EXPORT_ENTRY=str(tmp_path / "entry"))
    try:
        assert await _exit_code(server) == 1
    finally:
        server.stop()
    failure = next(line for line in server.log().splitlines() if "model_load_failed" in line)
    assert f"model directory not found: {tmp_path / 'missing'}" in json.loads(failure)["error"]
    assert "model_preloaded" not in server.log()


async def test_invalid_configuration_exits_2(tmp_path: Path) -> None:
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="tensorflow")
    try:
        assert await _exit_code(server) == 2
    finally:
        server.stop()
    assert "invalid_configuration" in server.log()
    assert "backend" in server.log()


async def _health_statuses(server: ServerProcess, seconds: float,
                           first_within_s: float = 60) -> list[int]:
    """Every /health status answered during ``seconds`` from the first answer, which must
    come within ``first_within_s`` (the interpreter starts slowly on a loaded machine)."""
    seen: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + first_within_s
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            try:
                async with session.get(f"{server.url}/health") as response:
                    if not seen:
                        deadline = loop.time() + seconds
                    seen.append(response.status)
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    return seen


async def test_sigterm_while_loading_exits_0_promptly(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_STARTUP_DELAY_S="600"
    )
    try:
        statuses = await _health_statuses(server, seconds=1.5)
        assert statuses and set(statuses) == {503}
        server.terminate()
        assert await _exit_code(server, within_s=10) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit on SIGTERM\n{server.log()}")
    finally:
        server.stop()


async def test_sigterm_answers_kept_alive_connections_each_saying_close(tmp_path: Path) -> None:
    """The two-node swarm's drain failed requests (stop 37): at SIGTERM, the answer to a
    request in flight kept its connection alive, and aiohttp's shutdown then read the
    gateway's next request on it and dropped it unanswered. Now every answer after SIGTERM
    says `Connection: close`, and a kept-alive connection is still answered for a moment
    (model_server/server.py `_drain`), while a new connection is refused."""
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8",
                          MODEL_SERVER_TEST_SERVICE_TIME_MS="300")
    try:
        async with aiohttp.ClientSession() as session:
            await poll_health(session, server)
        busy = await asyncio.open_connection(HOST, server.port)
        idle = await asyncio.open_connection(HOST, server.port)
        assert "200 OK" in await (await ask(*idle, "/embed", "first"))  # kept alive, then idle
        in_flight = await ask(*busy, "/embed", "in flight")
        await asyncio.sleep(0.1)
        server.terminate()
        head = await in_flight
        assert head.startswith("HTTP/1.1 200") and "Connection: close" in head, head
        late = await (await ask(*idle, "/embed", "on the idle connection, after SIGTERM"))
        assert late.startswith("HTTP/1.1 200") and "Connection: close" in late, late
        await _until_refused(server.port)
        for _, writer in (busy, idle):
            writer.close()
        assert await _exit_code(server) == 0
    finally:
        server.stop()
