"""Users (accounts; DESIGN.md §3, §9)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from db.errors import translated
from db.pool import Executor


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    email: str | None
    is_admin: bool
    created_at: datetime


def _user(row: Any) -> User | None:
    return User(**dict(row)) if row is not None else None


async def ensure(db: Executor, username: str, *, is_admin: bool = False) -> User:
    """The user with this name, created (without a password) if missing."""
    async with translated():
        row = await db.fetchrow(
            """INSERT INTO users (username, is_admin) VALUES ($1, $2)
               ON CONFLICT (username) DO UPDATE SET username = EXCLUDED.username
               RETURNING id, username, email, is_admin, created_at""",
            username, is_admin,
        )
    user = _user(row)
    assert user is not None
    return user


async def get_by_name(db: Executor, username: str) -> User | None:
    async with translated():
        return _user(await db.fetchrow(
            "SELECT id, username, email, is_admin, created_at FROM users WHERE username = $1",
            username,
        ))
