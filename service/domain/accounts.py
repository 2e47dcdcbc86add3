"""Users, passwords, logins, token revocation and API keys."""

import secrets
from datetime import UTC, datetime, timedelta

import asyncpg

from db import api_keys, users
from db.api_keys import ApiKey
from db.errors import UniqueViolation
from db.users import User
from edge.auth.authentication import API_KEY_PREFIX, hash_api_key
from schemas.auth import ApiKeyCreate, UserCreate
from schemas.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from schemas.tokens import USER_TOKEN_TTL, issue_user_token
from service.domain.passwords import Passwords, hash_password

__all__ = ["hash_password"]  # for the CLI and tests, which hash outside an event loop
WRONG_CREDENTIALS = "invalid username or password"


async def create_user(pool: asyncpg.Pool, body: UserCreate,
                      passwords: Passwords | None = None) -> User:
    """A new user; its hash is computed in `passwords`' pool (inline where none is given:
    the CLI and `up`, which serve no requests meanwhile)."""
    hashed = (await passwords.hash(body.password) if passwords is not None
              else hash_password(body.password))
    try:
        return await users.create(pool, username=body.username, password_hash=hashed,
                                  email=body.email, is_admin=body.is_admin)
    except UniqueViolation:
        raise Conflict(f"user {body.username!r} already exists") from None


def _token(secret: str, user: User) -> tuple[str, datetime]:
    """A user token carrying the user's current token version, and when it expires."""
    expires_at = datetime.now(UTC) + USER_TOKEN_TTL
    return issue_user_token(secret, user.id, USER_TOKEN_TTL, user.token_version), expires_at


async def _checked(pool: asyncpg.Pool, passwords: Passwords, username: str,
                   password: str) -> User | None:
    """The user if `password` is theirs (rehashed if the parameters changed), else None.
    An unknown user costs one verification too."""
    found = await users.password_hash(pool, username)
    user, stored = found if found is not None else (None, None)
    if not await passwords.verify(stored, password) or user is None:
        return None
    if stored is not None and passwords.needs_rehash(stored):
        await users.set_password_hash(pool, user.id, await passwords.hash(password))
    return user


async def login(pool: asyncpg.Pool, passwords: Passwords, secret: str, username: str,
                password: str) -> tuple[User, str, datetime]:
    """A user token for valid credentials of an enabled user; 401 otherwise, the same for
    any failure (a disabled user's right password tells nothing more)."""
    user = await _checked(pool, passwords, username, password)
    if user is None or user.disabled:
        raise Unauthorized(WRONG_CREDENTIALS)
    return user, *_token(secret, user)


async def change_password(pool: asyncpg.Pool, passwords: Passwords, secret: str,
                          user_id: int, current: str, new: str) -> tuple[User, str, datetime]:
    """Set a new password given the current one; every older token of the user stops working,
    and a fresh one is returned. 403 if `current` is wrong."""
    user = await users.get(pool, user_id)
    if user is None:
        raise Unauthorized("the token's user no longer exists")
    if await _checked(pool, passwords, user.username, current) is None:
        raise Forbidden("the current password is wrong")
    if new == current:
        raise Invalid("invalid request: the new password is the current one")
    changed = await users.set_password_and_revoke(pool, user.id, await passwords.hash(new))
    if changed is None:
        raise Unauthorized("the token's user no longer exists")
    return changed, *_token(secret, changed)


async def revoke_tokens(pool: asyncpg.Pool, user_id: int) -> None:
    """Every token the user holds stops working (their API keys are kept)."""
    await users.revoke_tokens(pool, user_id)


async def set_disabled(pool: asyncpg.Pool, username: str, disabled: bool,
                       caller_id: int) -> User:
    """Disable a user (no login, every token and API key refused) or enable them again."""
    target = await users.get_by_name(pool, username)
    if target is None:
        raise NotFound(f"user {username!r} not found")
    if disabled and target.id == caller_id:
        raise Forbidden("not allowed: an administrator cannot disable themselves")
    changed = await users.set_disabled(pool, username, disabled)
    if changed is None:
        raise NotFound(f"user {username!r} not found")
    return changed


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
                                name=body.name, expires_at=_expiry(body), lane=body.lane,
                                requests_per_s=body.requests_per_s,
                                tokens_per_s=body.tokens_per_s)
    return row, key


async def revoke_api_key(pool: asyncpg.Pool, key_id: int, user_id: int,
                         is_admin: bool) -> bool:
    """Revoke a key; True if it was revoked now, False if it was already (nothing changed,
    so there is nothing to announce). 404 for a key that is not there or not the caller's."""
    revoked = await api_keys.revoke(pool, key_id, None if is_admin else user_id)
    if revoked is None:
        raise NotFound(f"API key {key_id} not found")
    return revoked
