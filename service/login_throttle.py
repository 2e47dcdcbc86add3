"""A bound on failed logins per username and per client address (429 with Retry-After).

Counted in the API process's memory: a sliding window of failure times per key. Several API
processes each count their own, so the bound is per process; it still turns an online
password guess from thousands a second into a handful a window.
"""

import math
import time
from collections import defaultdict, deque

from service.errors import ApiError


class LoginThrottle:
    def __init__(self, max_per_user: int, max_per_address: int, window_s: float) -> None:
        self._limits = {"user": max_per_user, "address": max_per_address}
        self._window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures[key]
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if not times:
            del self._failures[key]  # keeps memory bounded by recent failures only
        return times

    def check(self, username: str, address: str) -> None:
        """429 if either the username or the address used up its failures in the window."""
        now = time.monotonic()
        for kind, value in (("user", username.lower()), ("address", address)):
            times = self._recent((kind, value), now)
            if len(times) >= self._limits[kind]:
                retry = max(1, math.ceil(times[0] + self._window_s - now))
                what = "account" if kind == "user" else "address"
                raise ApiError(429, f"too many failed logins for this {what}; try again in "
                                    f"{retry} s", {"retry_after_s": retry},
                               headers={"Retry-After": str(retry)})

    def failed(self, username: str, address: str) -> None:
        now = time.monotonic()
        self._failures[("user", username.lower())].append(now)
        self._failures[("address", address)].append(now)

    def succeeded(self, username: str) -> None:
        self._failures.pop(("user", username.lower()), None)
