"""API keys: stored as a SHA-256 of the key (the key itself is shown once, never stored)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from db.errors import translated
from db.pool import Executor
from db.users import User

_COLUMNS = ("id, user_id, name, expires_at, revoked_at, created_at, lane, requests_per_s, "
            "tokens_per_s")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    user_id: int
    name: str
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    # Issue 29: the data plane's priority lane and per-model rate limits (None: default).
    lane: str = "interactive"
    requests_per_s: float | None = None
    tokens_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class KeyTraits:
    """What the gateway reads of the key a request came with."""

    key_id: int
    lane: str
    requests_per_s: float | None
    tokens_per_s: float | None


def _key(row: Any) -> ApiKey | None:
    return ApiKey(**dict(row)) if row is not None else None


async def insert(db: Executor, *, user_id: int, key_hash: str, name: str,
                 expires_at: datetime | None, lane: str = "interactive",
                 requests_per_s: float | None = None,
                 tokens_per_s: float | None = None) -> ApiKey:
    async with translated():
        row = await db.fetchrow(
            f"""INSERT INTO api_keys (user_id, key_hash, name, expires_at, lane,
                                      requests_per_s, tokens_per_s)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}""",
            user_id, key_hash, name, expires_at, lane, requests_per_s, tokens_per_s,
        )
    key = _key(row)
    assert key is not None
    return key


async def user_for_key(db: Executor, key_hash: str) -> User | None:
    """The owner of an unrevoked, unexpired key with this hash (never a disabled user)."""
    async with translated():
        row = await db.fetchrow(
            """SELECT u.id, u.username, u.email, u.is_admin, u.created_at, u.token_version,
                      u.disabled_at
               FROM api_keys k JOIN users u ON u.id = k.user_id
               WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.disabled_at IS NULL
                 AND (k.expires_at IS NULL OR k.expires_at > now())""",
            key_hash,
        )
    return User(**dict(row)) if row is not None else None


async def traits_for_key(db: Executor, key_hash: str) -> KeyTraits | None:
    """The lane and limits of the key with this hash (the caller was authenticated by it)."""
    async with translated():
        row = await db.fetchrow(
            """SELECT id AS key_id, lane, requests_per_s, tokens_per_s FROM api_keys
               WHERE key_hash = $1""", key_hash)
    return KeyTraits(**dict(row)) if row is not None else None


async def list_for_user(db: Executor, user_id: int) -> list[ApiKey]:
    async with translated():
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY id", user_id)
    return [ApiKey(**dict(r)) for r in rows]


async def revoke(db: Executor, key_id: int, user_id: int | None) -> bool | None:
    """Revoke a key (of `user_id`, or of anyone when None). True: revoked now; False: it
    was revoked already (nothing changed); None: there is no such key."""
    async with translated():
        row = await db.fetchrow(
            """WITH target AS (
                   SELECT id, revoked_at FROM api_keys
                   WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)),
               changed AS (
                   UPDATE api_keys k SET revoked_at = now() FROM target t
                   WHERE k.id = t.id AND t.revoked_at IS NULL RETURNING k.id)
               SELECT (SELECT count(*) FROM target) AS found,
                      (SELECT count(*) FROM changed) AS changed""",
            key_id, user_id,
        )
    if row is None or row["found"] == 0:
        return None
    return bool(row["changed"])
