"""The asyncpg pool, with jsonb decoded to Python objects."""

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from db.errors import translated

Executor = asyncpg.Pool | asyncpg.Connection


# 19 digits in a row: maybe an integer past 64 bits, which orjson reads as a float.
_LONG_DIGITS = re.compile(r"\d{19}")


def _loads(text: str) -> Any:
    """jsonb as Python values, as json.loads reads them: orjson where the two agree (several
    times faster; a task poll decodes four jsonb columns), json for long digit runs and for
    what orjson refuses (a number past a float's range)."""
    if _LONG_DIGITS.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=_loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's reset query (RESET ALL, UNLISTEN *, CLOSE ALL,
    advisory unlock): one round trip per release on the hot paths, for session state our
    code never leaves on a pooled connection (advisory locks are transaction-scoped, LISTEN
    and the migration lock use connections of their own). An open transaction is still
    rolled back by asyncpg before this runs."""


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **kw: Any
) -> asyncpg.Pool:
    """Open a pool whose connections read and write jsonb as Python values."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        reset=_keep_session, **kw
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction, with driver errors translated."""
    async with translated(), pool.acquire() as conn, conn.transaction():
        yield conn
