"""Signed bearer tokens (user, job and update JWTs), shared by the API and the workers.

Three kinds, told apart by the `typ` claim: `user` (login JWTs), `job` (given to each
replica: one model, one generation, alive while that generation is) and `update`
(returned by the save endpoint: one model, one hour). All are HS256 JWTs signed with a
key derived from GREENROOM_SECRET_KEY, never with the raw secret.
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


class InvalidToken(Exception):
    """The token is malformed, forged, expired or of an unknown kind."""


class Claims(BaseModel):
    typ: TokenType
    sub: str
    exp: datetime | None = None
    gen: int | None = None


def derive_key(secret: str, purpose: str) -> bytes:
    """A purpose-specific 32-byte key, so one secret never signs two kinds of thing."""
    return hmac.new(secret.encode(), f"greenroom:{purpose}".encode(), hashlib.sha256).digest()


def _encode(secret: str, claims: dict[str, object], ttl: timedelta | None) -> str:
    now = datetime.now(UTC)
    payload: dict[str, object] = {"iss": ISSUER, "iat": now, **claims}
    if ttl is not None:
        payload["exp"] = now + ttl
    return jwt.encode(payload, derive_key(secret, "jwt"), algorithm=ALGORITHM)


def issue_user_token(secret: str, user_id: int, ttl: timedelta = USER_TOKEN_TTL) -> str:
    return _encode(secret, {"typ": "user", "sub": str(user_id)}, ttl)


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
