"""Inference access through the gateway, decided once a second per caller.

Public models need no token; others need read permission. A caller who may not read the
model (no token, or a token without read) is answered as for a missing deployment (404), so
no answer tells a private deployment exists; a bad token is 401 whatever the name names.
A decision (allowed, or the 401/404 it came to) is cached per Authorization header and
model for `ttl_s` (1 s by default), so a busy caller costs the database one lookup a
second instead of one a request; a message on the auth channel (a key revoked, a grant
changed) clears the cache at once, and the TTL bounds how long a lost message can leave a
revoked key working.
"""

import time
from uuid import UUID

from aiohttp import web

from db import models
from edge.auth.authentication import authenticate
from edge.auth.locators import deployment_not_found
from edge.auth.permissions import knows_of, permission_on
from edge.keys import PG
from schemas.auth import Permission
from schemas.errors import Forbidden, GreenroomError, Unauthorized

MAX_ENTRIES = 10_000
_Entry = tuple[float, GreenroomError | None]


class AccessCache:
    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[tuple[str, UUID, str], _Entry] = {}

    def clear(self) -> None:
        self._entries = {}

    async def check(self, request: web.Request, name: str, model_id: UUID,
                    access_level: str) -> None:
        """Return if the caller may use the model the deployment `name` serves; raise its
        401 (a bad token) or the missing deployment's 404 otherwise."""
        header = request.headers.get("Authorization")
        if header is None:
            if access_level == "public":
                return
            raise deployment_not_found(name)
        key = (header, model_id, name)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is None or hit[0] <= now:
            hit = (now + self.ttl_s, await _decision(request, name, model_id, access_level))
            if len(self._entries) >= MAX_ENTRIES:
                self.clear()
            self._entries[key] = hit
        if hit[1] is not None:
            raise hit[1].with_traceback(None)  # a fresh traceback, not one grown per raise


async def _decision(request: web.Request, name: str, model_id: UUID,
                    access_level: str) -> GreenroomError | None:
    """None if allowed, else the client error; anything else (a database outage) raises."""
    try:
        principal = await authenticate(request)
    except Unauthorized as exc:
        return exc
    if access_level == "public":
        return None
    model = await models.get(request.app[PG], model_id)
    if model is None:
        return deployment_not_found(name)
    level, _ = await permission_on(request.app[PG], principal, model)
    if not knows_of(principal, model, level):
        return deployment_not_found(name)
    if level < Permission.read:
        return Forbidden(f"read permission on {model.identifier} is required")
    return None
