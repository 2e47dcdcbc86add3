"""Postgres and Redis of the bed's own, in one of its hosts, listening on that host's address.

Postgres is Debian's PostgreSQL 15 (`initdb` + `postgres` from /usr/lib/postgresql/15/bin)
in a temporary data folder, run as the `postgres` user (it refuses root), trusting the
bed's subnet only; Redis is `redis-server` without persistence, with the ACL user and drawn
password of `greenroom up`'s embedded one (it listens on a routable address).
"""

import contextlib
import os
import pwd
import shutil
import socket
import time
from pathlib import Path

from launch.embedded import CONFIG_FILE, REDIS_USER, acl_config, redis_password
from launch.stack_state import write_private
from tests.multihost.netbed import SUBNET, Host, NetBed

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PORT = 5432
REDIS_PORT = 6379


def missing_backing() -> str | None:
    """Why the bed cannot run its own Postgres and Redis here (a skip reason), or None."""
    if not (PG_BIN / "postgres").exists():
        return f"no PostgreSQL 15 binaries under {PG_BIN}"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` user to run PostgreSQL as"
    if shutil.which("redis-server") is None:
        return "no redis-server"
    return None


def _wait_port(bed: NetBed, host: Host, port: int, timeout_s: float = 30) -> None:
    """Until `host:port` accepts a connection, tried from inside `host`."""
    deadline = time.monotonic() + timeout_s
    with bed.inside(host):
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((host.address, port), 0.5):
                return
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host.address}:{port} after {timeout_s:g}s")


def start_postgres(bed: NetBed, host: Host, folder: Path) -> str:
    """A fresh cluster in `folder` (whose parents the postgres user can search), listening
    on `host`'s address; returns the admin DSN."""
    user = pwd.getpwnam("postgres")
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "pgdata"
    data.mkdir()
    os.chown(data, user.pw_uid, user.pw_gid)
    folder.chmod(0o711)  # the postgres user must reach its data (the parents too)
    bed.run(host, ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
                   "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"], timeout_s=120)
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {SUBNET}.0/24 trust\n")
    bed.popen(host, [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(PG_PORT),
                     "-c", f"listen_addresses={host.address}",
                     "-c", f"unix_socket_directories={data}", "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "max_connections=300"],
              log=folder / "postgres.log", user="postgres")
    _wait_port(bed, host, PG_PORT)
    return f"postgresql://postgres@{host.address}:{PG_PORT}/postgres"


def start_redis(bed: NetBed, host: Host, folder: Path) -> str:
    """A password-protected redis-server on `host`'s address; returns its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    password = redis_password(folder)
    write_private(folder / CONFIG_FILE, acl_config(password))
    bed.popen(host, ["redis-server", str(folder / CONFIG_FILE), "--bind", host.address,
                     "--port", str(REDIS_PORT),
                     "--save", "", "--appendonly", "no", "--protected-mode", "no",
                     "--dir", str(folder)], log=folder / "redis.log")
    _wait_port(bed, host, REDIS_PORT)
    return f"redis://{REDIS_USER}:{password}@{host.address}:{REDIS_PORT}/0"
