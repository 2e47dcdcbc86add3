"""Signed bearer tokens (user, job and update JWTs), shared by the API and the workers.

Three kinds, told apart by the `typ` claim: `user` (login JWTs), `job` (given to each
replica: one model, one generation, alive while that generation is) and `update`
(returned by the save endpoint: one model, one hour). All are HS256 JWTs signed with a
key derived from GREENROOM_SECRET_KEY, never with the raw secret. A user token carries its
user's token version (`ver`): bumping the version in the database revokes every token
issued before (edge/auth/authentication.py checks it).

The secret must be at least `MIN_SECRET_BYTES` random bytes: with a short or guessable one,
anybody holding one token can find the key offline and forge an administrator's.
"""

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import jwt
from pydantic import BaseModel, ValidationError

ALGORITHM = "HS256"
ISSUER = "greenroom"
USER_TOKEN_TTL = timedelta(hours=12)
UPDATE_TOKEN_TTL = timedelta(hours=1)
TokenType = Literal["user", "job", "update"]
# HS256's key should be as long as its hash (RFC 7518 3.2): 32 bytes.
MIN_SECRET_BYTES = 32
# Fewer distinct characters than this is a pattern, not a random key ("aaaa…", "abab…").
MIN_SECRET_DISTINCT = 8
HOW_TO_DRAW = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def weak_secret_reason(secret: str) -> str | None:
    """Why `secret` cannot be the signing key (None if it can)."""
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        return (f"GREENROOM_SECRET_KEY is {size} bytes; it must be at least "
                f"{MIN_SECRET_BYTES} random bytes (draw one with: {HOW_TO_DRAW})")
    if len(set(secret)) < MIN_SECRET_DISTINCT:
        return (f"GREENROOM_SECRET_KEY has fewer than {MIN_SECRET_DISTINCT} distinct "
                f"characters, so it is not random (draw one with: {HOW_TO_DRAW})")
    return None


class InvalidToken(Exception):
    """The token is malformed, forged, expired or of an unknown kind."""


class Claims(BaseModel):
    typ: TokenType
    sub: str
    exp: datetime | None = None
    gen: int | None = None
    # A user token's token version (absent in tokens issued before migration 007: 0).
    ver: int = 0


def derive_key(secret: str, purpose: str) -> bytes:
    """A purpose-specific 32-byte key, so one secret never signs two kinds of thing."""
    return hmac.new(secret.encode(), f"greenroom:{purpose}".encode(), hashlib.sha256).digest()


def _encode(secret: str, claims: dict[str, object], ttl: timedelta | None) -> str:
    now = datetime.now(UTC)
    payload: dict[str, object] = {"iss": ISSUER, "iat": now, **claims}
    if ttl is not None:
        payload["exp"] = now + ttl
    return jwt.encode(payload, derive_key(secret, "jwt"), algorithm=ALGORITHM)


def issue_user_token(secret: str, user_id: int, ttl: timedelta = USER_TOKEN_TTL,
                     version: int = 0) -> str:
    """A user's token, valid while the user's token version is still `version`."""
    return _encode(secret, {"typ": "user", "sub": str(user_id), "ver": version}, ttl)


def issue_job_token(secret: str, model_id: UUID, generation: int) -> str:
    """No expiry of its own: the API rejects it once the generation has no live replica."""
    return _encode(secret, {"typ": "job", "sub": str(model_id), "gen": generation}, None)


def issue_update_token(secret: str, model_id: UUID, ttl: timedelta = UPDATE_TOKEN_TTL) -> str:
    return _encode(secret, {"typ": "update", "sub": str(model_id)}, ttl)


def decode(secret: str, token: str) -> Claims:
    """Verify signature, issuer and expiry; InvalidToken on any failure."""
    try:
        payload = jwt.decode(token, derive_key(secret, "jwt"), algorithms=[ALGORITHM],
                             issuer=ISSUER, options={"require": ["typ", "sub", "iat"]})
        return Claims.model_validate(payload)
    except (jwt.PyJWTError, ValidationError) as exc:
        raise InvalidToken(type(exc).__name__) from None
