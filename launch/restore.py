"""`greenroom up` reports the deployments it brought back from its last run (issue 19).

Its last stop removed every replica but left the deployments in Postgres; the worker's
reconciler finds their replicas gone and starts replacements. This waits for them.
"""

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

from db import restore
from db.pool import create_pool

POLL_S = 0.5


async def report_restored(dsn: str, since: datetime, timeout_s: float,
                          say: Callable[[str], None]) -> list[str]:
    """Say which deployments served before `since` and wait until each serves again."""
    pool = await create_pool(dsn, max_size=1)
    try:
        names = await restore.serving_before(pool, since)
        if not names:
            return []
        say(f"restoring {len(names)} deployment(s) from the last run: {', '.join(names)}")
        deadline = time.monotonic() + timeout_s
        ready: set[str] = set()
        while time.monotonic() < deadline:
            ready = await restore.ready_since(pool, since) & set(names)
            if len(ready) == len(names):
                break
            await asyncio.sleep(POLL_S)
    finally:
        await pool.close()
    restored = sorted(ready)
    say(f"restored {len(restored)} deployment(s), serving: {', '.join(restored) or 'none'}")
    if missing := sorted(set(names) - ready):
        say(f"not serving yet: {', '.join(missing)} (see GET /deploy-status/<model>)")
    return restored
