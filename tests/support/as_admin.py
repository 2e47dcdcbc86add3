"""The control-plane client as the administrator: a test module that calls as the
administrator imports these fixtures (`from tests.support.as_admin import admin_http`): as
the fixture `http` (and `anon_http`) they take the place of tests/conftest.py's own (no
token) in that module.

Every route but health, metrics, the anonymous permission query and public-model
inference needs a bearer token; tests written before accounts existed keep working by
calling as the administrator. `anon_http` is the client without a token (30 s timeout).
"""

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture(name="http")
async def admin_http(admin_headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     headers=admin_headers) as session:
        yield session


@pytest.fixture(name="anon_http")
async def admin_anon_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
