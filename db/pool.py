"""The asyncpg pool, with jsonb decoded to Python objects."""

import json
from typing import Any

import asyncpg

Executor = asyncpg.Pool | asyncpg.Connection


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **kw: Any
) -> asyncpg.Pool:
    """Open a pool whose connections read and write jsonb as Python values."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kw
    )
    assert pool is not None
    return pool
