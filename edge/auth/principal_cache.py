"""Who a bearer token names, remembered for up to a second.

A user's JWT or API key resolves to a Principal through the database; a client polling
a task would pay that on every request. The answer is kept per token for `ttl_s`
(`access_cache_ttl_s`, 1 s by default, and never past the token's own expiry); every
message on the auth channel (a key revoked, a grant changed) clears the cache at once,
so a revoked key stops working within the TTL even if that message is lost. Only user
principals are cached: job and update tokens are checked every time.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.auth import Principal
from schemas.queue import AUTH_CHANNEL

log = structlog.get_logger(__name__)
MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal]] = {}
        # Told of every access change (long-lived streams re-check their caller).
        self.listeners: set[Callable[[], None]] = set()

    def get(self, token: str) -> Principal | None:
        hit = self._entries.get(token)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            self._entries.pop(token, None)
            return None
        return hit[1]

    def put(self, token: str, principal: Principal) -> None:
        if principal.kind != "user" or self.ttl_s <= 0:
            return
        ttl = self.ttl_s
        if principal.expires_at is not None:
            ttl = min(ttl, (principal.expires_at - datetime.now(UTC)).total_seconds())
        if ttl <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self.clear()
        self._entries[token] = (time.monotonic() + ttl, principal)

    def clear(self) -> None:
        self._entries = {}

    def access_changed(self) -> None:
        """An auth-channel message (or messages possibly missed): forget, and tell."""
        self.clear()
        for listener in list(self.listeners):
            listener()


PRINCIPALS = web.AppKey("principals", PrincipalCache)


async def watch_auth_channel(redis: Redis, cache: PrincipalCache, retry_s: float = 1.0) -> None:
    """Clear the cache on every auth-channel message; resubscribe after a Redis outage."""
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(AUTH_CHANNEL)
                cache.access_changed()  # whatever was missed while unsubscribed
                while True:
                    # A short read timeout: the connection's own socket timeout would
                    # otherwise end a quiet subscription.
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=1.0)
                    if message is not None:
                        cache.access_changed()
        except (RedisError, OSError) as exc:
            log.warning("auth_channel_unavailable", error=str(exc))
            cache.access_changed()
            await asyncio.sleep(retry_s)


def principal_cache_ctx(redis_key: web.AppKey[Any], ttl_s: float) -> Callable[
        [web.Application], AsyncIterator[None]]:
    """A cleanup context: the app's PrincipalCache and its auth-channel watcher."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cache = PrincipalCache(ttl_s)
        app[PRINCIPALS] = cache
        watcher = asyncio.create_task(watch_auth_channel(app[redis_key], cache))
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return ctx
