"""Requests held for a deployment scaled to zero (issue 14), as Knative's activator does.

A request for a serving deployment with no ready replica whose autoscaling may go to
zero waits here, bounded in count (per deployment, per gateway process) and in time,
while the gateway reports the held count as demand; the autoscaler starts a replica,
the worker publishes the new route, the reload wakes the waiters and they are sent on.
Past either bound the answer is 503 with Retry-After, never a hang.
"""

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable
from uuid import UUID

from db.deployments import Route
from schemas.errors import NotFound, Unavailable, UpstreamTimeout


class Holds:
    def __init__(self, timeout_s: float = 30.0, max_held: int = 100) -> None:
        self.timeout_s, self.max_held = timeout_s, max_held
        self.held: Counter[UUID] = Counter()
        self._ready: dict[UUID, asyncio.Event] = {}

    def counts(self) -> dict[str, int]:
        """model id → requests held now (the report's `held`)."""
        return {str(k): v for k, v in self.held.items() if v > 0}

    def wake(self, lookup: Callable[[str], Route | None]) -> None:
        """After a reload: wake the waiters of every deployment that has a replica again."""
        for model_id, event in list(self._ready.items()):
            route = lookup(str(model_id))
            if route is None or route.replicas:
                event.set()

    def _refuse(self, route: Route, why: str) -> Unavailable:
        retry = max(1, math.ceil(self.timeout_s / 2))
        return Unavailable(f"deployment {route.name!r} is starting a replica ({why}); "
                           "retry shortly", {"retry_after_s": retry}, retry_after_s=retry)

    async def hold(self, route: Route, announce: Callable[[], None],
                   lookup: Callable[[str], Route | None],
                   deadline: float | None = None) -> Route:
        """Wait for a ready replica of `route`'s deployment; the fresh route, or 503 (504
        once the request's `deadline`, a time.monotonic(), passes first: issue 29)."""
        wait_s = self.timeout_s
        if deadline is not None:
            wait_s = min(wait_s, deadline - time.monotonic())
            if wait_s <= 0:
                raise _deadline_passed(route)
        if self.held[route.model_id] >= self.max_held:
            raise self._refuse(route, f"{self.max_held} requests already wait")
        event = self._ready.setdefault(route.model_id, asyncio.Event())
        self.held[route.model_id] += 1
        announce()
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    fresh = lookup(str(route.model_id))
                    if fresh is None:
                        raise NotFound(f"deployment {route.name!r} not found or not serving")
                    if fresh.replicas:
                        return fresh
                    event.clear()
                    await event.wait()
        except TimeoutError:
            if wait_s < self.timeout_s:  # the deadline was the nearer bound
                raise _deadline_passed(route) from None
            raise self._refuse(route, f"none was ready within {self.timeout_s:g} s") from None
        finally:
            self.held[route.model_id] -= 1
            if self.held[route.model_id] <= 0:
                del self.held[route.model_id]
                self._ready.pop(route.model_id, None)
            announce()


def _deadline_passed(route: Route) -> UpstreamTimeout:
    return UpstreamTimeout(f"the request's X-Request-Timeout passed while deployment "
                           f"{route.name!r} started a replica", {"deadline": "passed"})
