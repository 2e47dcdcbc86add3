"""Fixtures for the model server: in-process apps, gated backends, real subprocesses."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from model_server.app import create_app
from model_server.backends import Embedder, Embeddings, HashingEmbedder
from model_server.config import Settings
from model_server.lifecycle import Loader

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

AppClient = TestClient[Any, Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def hashing_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"backend": "hashing", "dimension": 64, "max_batch_wait_ms": 1}
    return Settings(**(values | overrides))


class GatedEmbedder(HashingEmbedder):
    """A hashing embedder whose compute can be held, to make timing-dependent tests exact."""

    def __init__(self, dimension: int) -> None:
        super().__init__(dimension)
        self.hold = False
        self.computing = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []

    def embed(self, texts: list[str]) -> Embeddings:
        self.calls.append(len(texts))
        if self.hold:
            self.computing.set()
            self.release.wait(timeout=10)
        return super().embed(texts)


@dataclass
class GatedLoader:
    """A loader that returns ``embedder`` once ``loaded`` is set."""

    embedder: Embedder
    loaded: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, settings: Settings) -> Embedder:
        await self.loaded.wait()
        return self.embedder


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., Any]]:
    """Start an in-process app on 127.0.0.1; closed after the test."""
    clients: list[AppClient] = []

    async def make(settings: Settings, loader: Loader | None = None) -> AppClient:
        app = create_app(settings, loader) if loader else create_app(settings)
        client: AppClient = TestClient(TestServer(app, host=HOST))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def app_client(make_client: Callable[..., Any]) -> AppClient:
    """A ready hashing app."""
    client: AppClient = await make_client(hashing_settings())
    await wait_until_healthy(client)
    return client


async def wait_until_healthy(client: AppClient, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        async with client.get("/health") as response:
            if response.status == 200:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("app never became healthy")


@dataclass
class ServerProcess:
    """A real ``python -m model_server`` on a free loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_server(tmp_path: Path, **env: str) -> ServerProcess:
    port = free_port()
    log_path = tmp_path / f"model_server_{port}.log"
    full_env = os.environ | {
        "PYTHONPATH": str(REPO_ROOT),
        "MODEL_SERVER_HOST": HOST,
        "MODEL_SERVER_PORT": str(port),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "model_server"],
            cwd=REPO_ROOT,
            env=full_env | env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(process, port, log_path)


async def poll_health(
    session: aiohttp.ClientSession, server: ServerProcess, within_s: float = 60
) -> list[int]:
    """Poll /health from the first moment until 200; the statuses seen, in order."""
    seen: list[int] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log()
        try:
            async with session.get(f"{server.url}/health") as response:
                seen.append(response.status)
                if response.status == 200:
                    return seen
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.02)
    raise AssertionError(f"server never became healthy; saw {seen}\n{server.log()}")
