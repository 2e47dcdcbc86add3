"""A bound on failed logins per username and per client address (429 with Retry-After).

Counted in the API process's memory: a sliding window of attempt times per key. Several API
processes each count their own, so the bound is per process; it still turns an online
password guess from thousands a second into a handful a window.

An attempt is counted (reserved) before the password is verified, so concurrent guesses
cannot all pass the check while the first ones are still hashing; a success takes its
reservation back. The table holds at most `max_keys` usernames and addresses (the least
recently used are forgotten first), so invented usernames or addresses cannot grow it without bound.
"""

import math
import time
from collections import deque

from schemas.errors import TooManyRequests

MAX_KEYS = 100_000


class LoginThrottle:
    def __init__(self, max_per_user: int, max_per_address: int, window_s: float,
                 max_keys: int = MAX_KEYS) -> None:
        self._limits = {"user": max_per_user, "address": max_per_address}
        self._window_s = window_s
        self._max_keys = max_keys
        # Insertion order is use order: the first key is the one to evict.
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if not times:
            del self._failures[key]  # keeps memory bounded by recent failures only
        return times

    def _keys(self, username: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("user", username.lower()), ("address", address)

    def check(self, username: str, address: str) -> None:
        """429 if either the username or the address used up its attempts in the window."""
        now = time.monotonic()
        for key in self._keys(username, address):
            times = self._recent(key, now)
            if len(times) >= self._limits[key[0]]:
                retry = max(1, math.ceil(times[0] + self._window_s - now))
                what = "account" if key[0] == "user" else "address"
                raise TooManyRequests(f"too many failed logins for this {what}; try again "
                                      f"in {retry} s", {"retry_after_s": retry},
                                      retry_after_s=retry)

    def attempt(self, username: str, address: str) -> float:
        """`check`, then count this attempt as a failure until `succeeded` says otherwise
        (in the same step: nothing awaits between them). Returns the attempt's mark."""
        self.check(username, address)
        now = time.monotonic()
        for key in self._keys(username, address):
            times = self._failures.pop(key, None)  # re-inserted last: most recently used
            if times is None:
                times = deque()
                while len(self._failures) >= self._max_keys:
                    del self._failures[next(iter(self._failures))]
            times.append(now)
            self._failures[key] = times
        return now

    def release(self, username: str, address: str, mark: float) -> None:
        """Take back an attempt's reservation (it ended without a verdict on the password)."""
        for key in self._keys(username, address):
            times = self._failures.get(key)
            if times is not None and mark in times:
                times.remove(mark)
                if not times:
                    del self._failures[key]

    def succeeded(self, username: str, address: str | None = None,
                  mark: float | None = None) -> None:
        """The password was right: the account's failures are forgotten, and the
        address's reservation for this attempt taken back."""
        self._failures.pop(("user", username.lower()), None)
        if address is not None and mark is not None:
            self.release(username, address, mark)
