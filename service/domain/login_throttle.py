"""Failed logins: growing waits per (username, address), which no other address's guesses
can impose on a user, and a bound on wrong passwords per address (429 with Retry-After).

Keycloak-style brute-force detection, counted in the API process's memory (several API
processes each count their own):

- Per (username, address): the first `free_failures` wrong passwords cost nothing; each one
  after that makes the caller wait `min(wait_base_s * 2**(n - free_failures - 1),
  wait_max_s)` after the n-th. A login for that username from that address during the wait
  answers 429 (with the wait left) before any password is verified: were it verified, a
  guesser would read a right guess from its 200 and a wrong one from its 429, and the wait
  would slow nothing. The wait is the guesser's own: an attacker guessing `alice` cannot
  lock her out, since her right password from her address (or any other) is verified as
  usual, and from the guesser's address it passes once the wait is over. The username is
  taken as typed (usernames are case-sensitive): `ALICE`'s failures are not `alice`'s.
- Per address (an IPv6 address counts as its /64, what one host is usually given): at most
  `max_per_address` wrong passwords within `window_s`. This one is checked before the
  password is verified (each verification is an argon2 hash), and it is what bounds the
  guesses one address can make at all. An attempt is counted (reserved) before it is
  verified, so concurrent guesses cannot all pass the check while the first ones are still
  hashing; a success takes its reservation back.

The tables hold at most `max_keys` entries each (the least recently used are forgotten first),
so invented usernames or addresses cannot grow them without bound.
"""

import ipaddress
import math
import time
from collections import deque
from dataclasses import dataclass

from schemas.errors import TooManyRequests

MAX_KEYS = 100_000


def address_key(remote: str | None) -> str:
    """The bucket of a client address: an IPv4 address itself, an IPv6 address's /64."""
    if not remote:
        return "unknown"
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class LoginThrottle:
    def __init__(self, *, free_failures: int, wait_base_s: float, wait_max_s: float,
                 max_per_address: int, window_s: float, max_keys: int = MAX_KEYS) -> None:
        self._free = free_failures
        self._base_s = wait_base_s
        self._max_s = wait_max_s
        self._per_address = max_per_address
        self._window_s = window_s
        self._max_keys = max_keys
        # Insertion order is use order: the first key is the one to evict.
        self._users: dict[tuple[str, str], _Failures] = {}
        self._addresses: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._users) + len(self._addresses)

    # --- per (username, address): growing waits ------------------------------------------

    def wait_after(self, failures: int) -> float:
        """The wait after the `failures`-th consecutive wrong password."""
        if failures <= self._free:
            return 0.0
        return min(self._base_s * 2.0 ** (failures - self._free - 1), self._max_s)

    def _entry(self, username: str, address: str, now: float) -> _Failures | None:
        key = (username, address)
        entry = self._users.get(key)
        # Forgotten once the wait is over and a window passed without a failure.
        if entry is not None and now - entry.last > self.wait_after(entry.count) + self._window_s:
            del self._users[key]
            return None
        return entry

    def wait_left(self, username: str, address: str) -> float:
        """Seconds until this (username, address) may send a wrong password without a 429."""
        now = time.monotonic()
        entry = self._entry(username, address_key(address), now)
        if entry is None:
            return 0.0
        return max(0.0, entry.last + self.wait_after(entry.count) - now)

    def refuse_during_wait(self, username: str, address: str) -> None:
        """429 with the wait left, before any password is verified, while this (username,
        address) waits; not counted (it was not checked)."""
        wait = self.wait_left(username, address)
        if wait > 0:
            retry = _retry_after(wait)
            raise TooManyRequests(f"too many failed logins for this account from this address; "
                                  f"try again in {retry} s", {"retry_after_s": retry},
                                  retry_after_s=retry)

    def failed(self, username: str, address: str) -> None:
        """A wrong password: counted; raises 429 if a wait began while it was being verified
        (a concurrent guess), which it lengthens."""
        bucket = address_key(address)
        now = time.monotonic()
        entry = self._entry(username, bucket, now)
        early = entry is not None and now < entry.last + self.wait_after(entry.count)
        if entry is None:
            while len(self._users) >= self._max_keys:
                del self._users[next(iter(self._users))]
            entry = _Failures(0, now)
        else:
            del self._users[(username, bucket)]  # re-inserted last: most recently used
        entry.count += 1
        entry.last = now
        self._users[(username, bucket)] = entry
        if early:
            retry = _retry_after(self.wait_after(entry.count))
            raise TooManyRequests(f"too many failed logins for this account from this address; "
                                  f"try again in {retry} s", {"retry_after_s": retry},
                                  retry_after_s=retry)

    # --- per address: a budget of wrong passwords -----------------------------------------

    def _recent(self, bucket: str, now: float) -> deque[float]:
        times = self._addresses.get(bucket)
        if times is None:
            return deque()
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if not times:
            del self._addresses[bucket]  # keeps memory bounded by recent failures only
        return times

    def attempt(self, address: str) -> float:
        """429 if the address used up its wrong passwords in the window; else count this
        attempt as one until `succeeded` or `release` says otherwise (in the same step:
        nothing awaits between the check and the count). Returns the attempt's mark."""
        bucket = address_key(address)
        now = time.monotonic()
        times = self._recent(bucket, now)
        if len(times) >= self._per_address:
            retry = _retry_after(times[0] + self._window_s - now)
            raise TooManyRequests(f"too many failed logins from this address; try again in "
                                  f"{retry} s", {"retry_after_s": retry}, retry_after_s=retry)
        self._addresses.pop(bucket, None)  # re-inserted last: most recently used
        if not times:
            while len(self._addresses) >= self._max_keys:
                del self._addresses[next(iter(self._addresses))]
        times.append(now)
        self._addresses[bucket] = times
        return now

    def release(self, address: str, mark: float) -> None:
        """Take back an attempt's reservation (it ended without a wrong password)."""
        bucket = address_key(address)
        times = self._addresses.get(bucket)
        if times is not None and mark in times:
            times.remove(mark)
            if not times:
                del self._addresses[bucket]

    def succeeded(self, username: str, address: str, mark: float) -> None:
        """The password was right: this (username, address)'s failures are forgotten and the
        attempt's reservation taken back."""
        self._users.pop((username, address_key(address)), None)
        self.release(address, mark)
