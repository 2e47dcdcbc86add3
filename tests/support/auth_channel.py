"""A real Redis subscriber counting the messages on the auth channel (each one clears every
API's and gateway's cached access decisions)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from schemas.queue import AUTH_CHANNEL


class AuthChannel:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def settled(self, count: int) -> list[bytes] | None:
        """The messages once `count` have come and no more within 0.3 s; else None."""
        await asyncio.sleep(0.3)
        return self.messages if len(self.messages) == count else None


@contextlib.asynccontextmanager
async def counting_auth_channel(redis_url: str) -> AsyncIterator[AuthChannel]:
    redis = Redis.from_url(redis_url)
    seen = AuthChannel()
    pubsub = redis.pubsub()
    await pubsub.subscribe(AUTH_CHANNEL)

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                seen.messages.append(message["data"])

    task = asyncio.create_task(listen())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await redis.aclose()
