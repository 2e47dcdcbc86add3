"""What several tests/security modules share: a client without a token, and the smallest
model archive an upload accepts."""

import io
import tarfile
from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def anon_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client without a token (each request says who it is itself)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def tiny_model_archive() -> bytes:
    """A tar.gz with `config.json` and `model.safetensors`: what an upload needs to pass."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in (("config.json", b"{}"), ("model.safetensors", b"weights")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()
