"""Integration fixtures: the shared `http` client carries the administrator's token.

Every route but health, metrics, the anonymous permission query and public-model
inference needs a bearer token; tests written before accounts existed keep working by
calling as the administrator. `anon_http` is the client without a token.
"""

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def http(admin_headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     headers=admin_headers) as session:
        yield session


@pytest.fixture
async def anon_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
