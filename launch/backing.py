"""Real Postgres and Redis for a test session or a benchmark run, and the processes' env.

The machine's Postgres if one answers on 127.0.0.1:5432 (or GREENROOM_TEST_DATABASE_URL),
else an embedded one; a Redis of the run's own (GREENROOM_TEST_REDIS_URL to share one);
fresh migrated databases; waiting for an HTTP server; the environment that hands a
`Settings` to a spawned Greenroom process. The tests (tests/support/services.py) and the
benchmarks (bench/) both use it.
"""

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from db.migrate import apply_migrations
from launch.embedded import start_postgres, start_redis
from schemas.settings import Settings

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def postgres_admin_dsn(tmp: Path, keep: list[Any]) -> str:
    dsn = os.environ.get("GREENROOM_TEST_DATABASE_URL")
    if dsn:
        return dsn
    if reachable("127.0.0.1", 5432):
        return DEFAULT_PG
    dsn, server = start_postgres(tmp / "postgres")
    keep.append(server)
    return dsn


def redis_url(tmp: Path, keep: list[Any]) -> str:
    """A real redis-server of this test session's own (queues and channels are global to a
    server, so sessions running side by side must not share one)."""
    url = os.environ.get("GREENROOM_TEST_REDIS_URL")
    if url:
        return url
    url, proc = start_redis(tmp / "redis")
    keep.append(proc)
    return url


def with_database(dsn: str, name: str) -> str:
    """The same server, another database."""
    base, _, query = dsn.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{name}" + (f"?{query}" if query else "")


async def create_database(admin_dsn: str, name: str) -> str:
    """A fresh, migrated database on the server of `admin_dsn`; returns its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = with_database(admin_dsn, name)
    await apply_migrations(dsn)
    return dsn


async def drop_database(admin_dsn: str, dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        name = dsn.partition("?")[0].rsplit("/", 1)[1]
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def wait_for_http(http: aiohttp.ClientSession, url: str, timeout_s: float = 30) -> None:
    """Until `url` answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:g}s")


def replica_processes(state_dir: Path) -> dict[int, bytes]:
    """pid → raw environment of every live replica process started under `state_dir`."""
    root = state_dir / "replicas"
    refs = {p.name for p in root.glob("*")} if root.exists() else set()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            raw = (proc / "environ").read_bytes()
        except OSError:
            continue
        if any(f"GREENROOM_REPLICA_ID={ref}".encode() in raw for ref in refs):
            found[int(proc.name)] = raw
    return found


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in settings.model_dump(exclude_none=True).items():
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if isinstance(raw, set | list | dict):
            raw = json.dumps(sorted(raw) if isinstance(raw, set) else raw)
        env[f"GREENROOM_{key.upper()}"] = str(raw)
    env["GREENROOM_LOG_JSON"] = "true"
    return env
