"""Real Postgres and Redis for the tests: the machine's if reachable, else embedded ones."""

import contextlib
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from service.embedded import start_postgres, start_redis

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


def private_redis(folder: Path, port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """A Redis of the test's own, to stop and start without disturbing other tests."""
    return start_redis(folder, port)
