"""Users: accounts with a password hash, an admin flag, a token version and a disabled mark."""

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
    # Bumped to revoke every token of the user (the JWT claim `ver` must match it).
    token_version: int = 0
    disabled_at: datetime | None = None

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


_USER_COLUMNS = "id, username, email, is_admin, created_at, token_version, disabled_at"


def _user(row: Any) -> User | None:
    return User(**dict(row)) if row is not None else None


async def ensure(db: Executor, username: str, *, is_admin: bool = False) -> User:
    """The user with this name, created (without a password) if missing."""
    async with translated():
        row = await db.fetchrow(
            f"""INSERT INTO users (username, is_admin) VALUES ($1, $2)
               ON CONFLICT (username) DO UPDATE SET username = EXCLUDED.username
               RETURNING {_USER_COLUMNS}""",
            username, is_admin,
        )
    user = _user(row)
    assert user is not None
    return user


async def get_by_name(db: Executor, username: str) -> User | None:
    async with translated():
        return _user(await db.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE username = $1",
            username,
        ))



async def create(db: Executor, *, username: str, password_hash: str, email: str | None = None,
                 is_admin: bool = False) -> User:
    """Insert a user; UniqueViolation(users_username_key) if the name is taken."""
    async with translated():
        row = await db.fetchrow(
            f"""INSERT INTO users (username, password_hash, email, is_admin)
                VALUES ($1, $2, $3, $4) RETURNING {_USER_COLUMNS}""",
            username, password_hash, email, is_admin,
        )
    user = _user(row)
    assert user is not None
    return user


async def get(db: Executor, user_id: int) -> User | None:
    async with translated():
        return _user(await db.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id))


async def password_hash(db: Executor, username: str) -> tuple[User, str | None] | None:
    """The user and their stored argon2 hash (None for accounts without a password)."""
    async with translated():
        row = await db.fetchrow(
            f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE username = $1", username)
    if row is None:
        return None
    values = dict(row)
    stored = values.pop("password_hash")
    return User(**values), stored


async def set_password_hash(db: Executor, user_id: int, new_hash: str) -> None:
    async with translated():
        await db.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user_id, new_hash)


async def set_password_and_revoke(db: Executor, user_id: int, new_hash: str) -> User | None:
    """Store a new password hash and bump the token version (every older token dies)."""
    async with translated():
        return _user(await db.fetchrow(
            f"""UPDATE users SET password_hash = $2, token_version = token_version + 1
                WHERE id = $1 RETURNING {_USER_COLUMNS}""", user_id, new_hash))


async def revoke_tokens(db: Executor, user_id: int) -> User | None:
    """Bump the user's token version: every token issued before stops working."""
    async with translated():
        return _user(await db.fetchrow(
            f"""UPDATE users SET token_version = token_version + 1 WHERE id = $1
                RETURNING {_USER_COLUMNS}""", user_id))


async def set_disabled(db: Executor, username: str, disabled: bool) -> User | None:
    """Disable (and revoke every token of) or enable a user; None if there is none."""
    async with translated():
        return _user(await db.fetchrow(
            f"""UPDATE users SET
                    disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END,
                    token_version = token_version + CASE WHEN $2 THEN 1 ELSE 0 END
                WHERE username = $1 RETURNING {_USER_COLUMNS}""", username, disabled))


async def list_all(db: Executor) -> list[User]:
    async with translated():
        rows = await db.fetch(f"SELECT {_USER_COLUMNS} FROM users ORDER BY id")
    return [User(**dict(r)) for r in rows]
