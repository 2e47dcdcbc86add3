"""Who is calling: the principal a request's bearer token (a JWT or an API key) names.

No token is ANONYMOUS; a malformed, unknown, revoked or expired one is `Unauthorized`.
A user's token is looked up at most once a second per API process
(edge/auth/principal_cache.py).
"""

import hashlib
from uuid import UUID

import asyncpg
from aiohttp import web

from db import api_keys, deployments, users
from edge.auth.principal_cache import PRINCIPALS
from edge.keys import PG, SETTINGS
from schemas.auth import ANONYMOUS, Principal
from schemas.errors import Unauthorized
from schemas.settings import Settings
from schemas.tokens import Claims, InvalidToken, decode, weak_secret_reason

API_KEY_PREFIX = "gr_"


def require_secret(settings: Settings) -> str:
    """The signing secret; the API and the gateway refuse to start without a strong one."""
    if settings.secret_key is None or not settings.secret_key.get_secret_value():
        raise RuntimeError("GREENROOM_SECRET_KEY is not set: the API needs it to sign and "
                           "verify tokens and to encrypt deployment secrets")
    secret = settings.secret_key.get_secret_value()
    if (reason := weak_secret_reason(secret)) is not None:
        raise RuntimeError(reason)
    return secret


def hash_api_key(key: str) -> str:
    """Keys are long random strings, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(key.encode()).hexdigest()


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    return token.strip()


async def _from_api_key(pool: asyncpg.Pool, key: str) -> Principal:
    user = await api_keys.user_for_key(pool, hash_api_key(key))
    if user is None:
        raise Unauthorized("API key is unknown, revoked or expired")
    return Principal(kind="user", user_id=user.id, username=user.username,
                     is_admin=user.is_admin, via="api_key")


async def _from_claims(pool: asyncpg.Pool, claims: Claims) -> Principal:
    if claims.typ == "user":
        user = await users.get(pool, int(claims.sub))
        if user is None:
            raise Unauthorized("the token's user no longer exists")
        if user.disabled:
            raise Unauthorized("the token's user is disabled")
        if claims.ver != user.token_version:
            raise Unauthorized("the token was revoked (logout, password change or disable)")
        return Principal(kind="user", user_id=user.id, username=user.username,
                         is_admin=user.is_admin, expires_at=claims.exp, via="jwt")
    model_id = UUID(claims.sub)
    if claims.typ == "job":
        assert claims.gen is not None
        if not await deployments.generation_is_live(pool, model_id, claims.gen):
            raise Unauthorized("job token of a stopped generation")
    return Principal(kind=claims.typ, model_id=model_id, generation=claims.gen,
                     expires_at=claims.exp, via="jwt")


async def authenticate(request: web.Request) -> Principal:
    """The caller named by the bearer token; ANONYMOUS without one; 401 for a bad one."""
    token = _bearer(request)
    if token is None:
        return ANONYMOUS
    cache = request.app.get(PRINCIPALS)
    if cache is not None and (known := cache.get(token)) is not None:
        return known
    principal = await _resolve_token(request, token)
    if cache is not None:
        cache.put(token, principal)
    return principal


async def _resolve_token(request: web.Request, token: str) -> Principal:
    pool = request.app[PG]
    if token.startswith(API_KEY_PREFIX):
        return await _from_api_key(pool, token)
    try:
        claims = decode(require_secret(request.app[SETTINGS]), token)
    except InvalidToken:
        raise Unauthorized("bearer token is invalid or expired") from None
    if claims.typ == "job" and claims.gen is None:
        raise Unauthorized("job token without a generation")
    try:
        return await _from_claims(pool, claims)
    except ValueError:
        raise Unauthorized("bearer token is invalid") from None
