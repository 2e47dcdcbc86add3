"""Users, passwords, logins and API keys."""

import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from db import api_keys, users
from db.api_keys import ApiKey
from db.errors import UniqueViolation
from db.users import User
from schemas.auth import ApiKeyCreate, UserCreate
from schemas.errors import Conflict, Invalid, NotFound, Unauthorized
from schemas.tokens import USER_TOKEN_TTL, issue_user_token
from service.auth.authentication import API_KEY_PREFIX, hash_api_key

_hasher = PasswordHasher()
# Verified against when the user does not exist, so timing does not reveal usernames.
_DUMMY_HASH = _hasher.hash("greenroom-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


async def create_user(pool: asyncpg.Pool, body: UserCreate) -> User:
    try:
        return await users.create(pool, username=body.username,
                                  password_hash=hash_password(body.password),
                                  email=body.email, is_admin=body.is_admin)
    except UniqueViolation:
        raise Conflict(f"user {body.username!r} already exists") from None


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


async def login(pool: asyncpg.Pool, secret: str, username: str,
                password: str) -> tuple[User, str, datetime]:
    """A user token for valid credentials; 401 otherwise, the same for any failure."""
    found = await users.password_hash(pool, username)
    user, stored = found if found is not None else (None, None)
    if not _verify(stored, password) or user is None:
        raise Unauthorized("invalid username or password")
    if stored is not None and _hasher.check_needs_rehash(stored):
        await users.set_password_hash(pool, user.id, hash_password(password))
    expires_at = datetime.now(UTC) + USER_TOKEN_TTL
    return user, issue_user_token(secret, user.id, USER_TOKEN_TTL), expires_at


def _expiry(body: ApiKeyCreate) -> datetime | None:
    if body.expires_at is not None:
        if body.expires_at.tzinfo is None:
            raise Invalid("invalid request: expires_at needs a time zone")
        if body.expires_at <= datetime.now(UTC):
            raise Invalid("invalid request: expires_at is in the past")
        return body.expires_at
    if body.expires_in_days is not None:
        return datetime.now(UTC) + timedelta(days=body.expires_in_days)
    return None


async def create_api_key(pool: asyncpg.Pool, user_id: int,
                         body: ApiKeyCreate) -> tuple[ApiKey, str]:
    """A new key for the user; the key itself is returned now and never again."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    row = await api_keys.insert(pool, user_id=user_id, key_hash=hash_api_key(key),
                                name=body.name, expires_at=_expiry(body))
    return row, key


async def revoke_api_key(pool: asyncpg.Pool, key_id: int, user_id: int,
                         is_admin: bool) -> None:
    if not await api_keys.revoke(pool, key_id, None if is_admin else user_id):
        raise NotFound(f"API key {key_id} not found")
