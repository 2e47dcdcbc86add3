"""What `greenroom up` keeps under its state folder, so restarts keep tokens and data.

- `secret_key`: the signing secret, drawn once (mode 0600); every token survives a restart.
- `stack.json`: the addresses of the running stack (database, Redis, API; mode 0600),
  read by every other `greenroom` command run in the same folder when GREENROOM_* are unset.
- `admin-password`: the password of the `admin` account `up` created on first start (0600).
- `token`: the token `greenroom login` saved (0600).
- `redis/password`: the embedded Redis's password, drawn once (0600; launch/embedded.py).
  `stack.json`'s `redis_url` carries it, which is why that file is 0600 too.
"""

import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from schemas.file_modes import private_dir
from schemas.settings import Settings

SECRET_FILE, STACK_FILE, ADMIN_FILE = "secret_key", "stack.json", "admin-password"
TOKEN_FILE = "token"
ADMIN_USERNAME = "admin"
# Settings a stack file may fill in, with the variable that takes precedence over it.
_STACK_KEYS = {"database_url": "GREENROOM_DATABASE_URL", "redis_url": "GREENROOM_REDIS_URL"}


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only, created that way (no window)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def secret_key(state_dir: Path) -> str:
    """The stack's signing secret: read from `secret_key`, drawn and stored on first use."""
    path = state_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(32)
    write_private(path, key + "\n")
    return key


@dataclass(frozen=True, slots=True)
class Stack:
    """Where the stack `up` runs can be reached."""

    api_url: str
    database_url: str
    redis_url: str
    redis_port: int | None = None
    worker_metrics_port: int | None = None
    gateway_url: str | None = None

    def save(self, state_dir: Path) -> None:
        write_private(state_dir / STACK_FILE, json.dumps({
            "api_url": self.api_url, "database_url": self.database_url,
            "redis_url": self.redis_url, "redis_port": self.redis_port,
            "worker_metrics_port": self.worker_metrics_port,
            "gateway_url": self.gateway_url}, indent=2) + "\n")


def load_stack(state_dir: Path) -> Stack | None:
    """The stack file of this folder, or None when `up` never ran here."""
    path = state_dir / STACK_FILE
    try:
        data = json.loads(path.read_text())
        return Stack(api_url=data["api_url"], database_url=data["database_url"],
                     redis_url=data["redis_url"], redis_port=data.get("redis_port"),
                     worker_metrics_port=data.get("worker_metrics_port"),
                     gateway_url=data.get("gateway_url"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def port_for(previous: int | None) -> int:
    """The port used last time if it is free again, else a free loopback port."""
    for port in ([previous] if previous else []) + [0]:
        with socket.socket() as sock:
            # As the servers bind: a port whose old connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free loopback port")


def settings_with_stack(settings: Settings) -> Settings:
    """`settings`, with what GREENROOM_* leave unset taken from this folder's stack."""
    stack = load_stack(settings.state_dir)
    fill: dict[str, Any] = {}
    if stack is not None:
        fill = {key: getattr(stack, key) for key, env in _STACK_KEYS.items()
                if not os.environ.get(env)}
    if settings.secret_key is None and (settings.state_dir / SECRET_FILE).exists():
        fill["secret_key"] = SecretStr(secret_key(settings.state_dir))
    return settings.model_copy(update=fill) if fill else settings


@dataclass(frozen=True, slots=True)
class AdminCredentials:
    username: str
    password: str

    def save(self, state_dir: Path) -> Path:
        path = state_dir / ADMIN_FILE
        write_private(path, self.password + "\n")
        return path


def load_admin(state_dir: Path) -> AdminCredentials | None:
    try:
        password = (state_dir / ADMIN_FILE).read_text().strip()
    except OSError:
        return None
    return AdminCredentials(ADMIN_USERNAME, password) if password else None


async def ensure_admin(database_url: str,
                       state_dir: Path) -> tuple[AdminCredentials | None, bool]:
    """The admin account of this stack: created with a drawn password on first start.

    Returns the credentials and whether they were created now. The password goes to
    `admin.json` (0600) only; nothing prints or logs it.
    """
    from db.pool import create_pool
    from schemas.auth import UserCreate
    from schemas.errors import Conflict
    from service.domain.accounts import create_user

    found = load_admin(state_dir)
    if found is not None:
        return found, False
    creds = AdminCredentials(ADMIN_USERNAME, secrets.token_urlsafe(18))
    pool = await create_pool(database_url, max_size=1)
    try:
        await create_user(pool, UserCreate(username=creds.username, password=creds.password,
                                           is_admin=True))
    except Conflict:
        # An `admin` made another way (users create): leave it and its password alone.
        return None, False
    finally:
        await pool.close()
    creds.save(state_dir)
    return creds, True
