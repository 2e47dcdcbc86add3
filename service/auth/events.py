"""Tell every gateway (and API) that access changed, so cached decisions are dropped now.

Best effort: if Redis cannot take the message, the caches still expire within
`access_cache_ttl_s` (1 s by default).
"""

import contextlib

from aiohttp import web

from schemas.queue import AUTH_CHANNEL, AccessChange, AccessChanged
from service.auth.principal_cache import PRINCIPALS
from service.keys import REDIS


async def announce_access_change(app: web.Application, what: AccessChange) -> None:
    cache = app.get(PRINCIPALS)
    if cache is not None:
        cache.clear()  # this process at once, before its next request
    with contextlib.suppress(Exception):
        await app[REDIS].publish(AUTH_CHANNEL, AccessChanged(what).encode())
