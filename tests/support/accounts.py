"""Helpers for tests of accounts, tokens and the Model Bazaar surfaces."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from db import users
from db.users import User
from schemas.tokens import issue_user_token
from tests.conftest import TEST_SECRET_KEY, bearer
from tests.support import services


async def make_user(pool: asyncpg.Pool, username: str, *, admin: bool = False,
                    password: str | None = None) -> tuple[User, dict[str, str]]:
    """A user (with a password if given) and the headers of a token of theirs."""
    hashed = None
    if password is not None:
        from service.domain.accounts import hash_password

        hashed = hash_password(password)
    existing = await users.get_by_name(pool, username)
    user = existing or await users.create(pool, username=username, password_hash=hashed or "",
                                          is_admin=admin)
    return user, bearer(issue_user_token(TEST_SECRET_KEY, user.id))


async def call(http: aiohttp.ClientSession, method: str, url: str,
               **kw: Any) -> tuple[int, Any]:
    """(status, JSON body) of a request; every Greenroom answer is JSON."""
    async with http.request(method, url, **kw) as resp:
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        return resp.status, await resp.json()


def replica_environs(state_dir: Path) -> list[dict[str, str]]:
    """The environment of every live model-server process started under `state_dir`."""
    found = []
    for raw in services.replica_processes(state_dir).values():
        pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
        found.append({k.decode(): v.decode(errors="replace") for k, _, v in pairs})
    return found


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 60,
                     what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise TimeoutError(what)
