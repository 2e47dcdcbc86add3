"""How often one caller may do one thing, counted in Redis so every API process shares it.

A fixed window per (what, who), Redis's INCR rate-limiter pattern in one round trip: the
first call of a window makes a counter that expires with the window, each call adds one,
and calls past `limit` are refused (TooManyRequests: 429 with Retry-After) until it ends.
"""

import math

from arq.connections import ArqRedis

from schemas.errors import TooManyRequests
from schemas.queue import RATE_KEY_PREFIX


async def take(redis: ArqRedis, what: str, who: str, limit: int, window_s: int) -> None:
    """Count one call of `who` to `what`; refuse it if the window already held `limit`."""
    key = f"{RATE_KEY_PREFIX}{what}:{who}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=window_s, nx=True)
        pipe.incr(key)
        pipe.pttl(key)
        _, count, left_ms = await pipe.execute()
    if count > limit:
        retry = max(1, math.ceil(left_ms / 1000))
        raise TooManyRequests(
            f"too many {what} requests: at most {limit} in {window_s} s; try again in "
            f"{retry} s", {"limit": limit, "window_s": window_s, "retry_after_s": retry},
            retry_after_s=retry)
