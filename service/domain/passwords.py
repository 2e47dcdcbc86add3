"""argon2 password hashes, computed off the event loop and bounded.

One argon2 verify (argon2-cffi's defaults: t=3, m=64 MiB, p=4) takes a core for a fifth of a
second or more; on the event loop it stalls every request of the API. Here each hash runs
in a thread pool of its own (`threads` at once: argon2-cffi's C code releases the GIL), and
at most `queue` more wait their turn. Past that a login is refused at once with 429 and
Retry-After instead of queueing without end: a caller waiting behind `queue` others (about
`queue` x 0.2 s / `threads`) is better told to come back, and a flood of logins cannot
hold the API's memory (64 MiB per running hash) or its clients' sockets. The same answer
comes sooner when the hashes are slow (a busy host: they run at a low priority): a login
whose wait, by the recent hashes' mean time, would pass `MAX_WAIT_S` is refused rather than
left to its client's timeout.

The pool's threads run at a low CPU priority (nice 10, Linux sets it per thread; the
threads argon2 starts for its lanes inherit it): when the cores are busy the event loop's
thread, at the process's own priority, runs first, so `/healthz` and every other request
stay fast while hashes queue.

An unknown user's login verifies against a dummy hash through the same pool, so neither the
time nor a refusal tells whether a username exists.
"""

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from schemas.errors import TooManyRequests

T = TypeVar("T")
_hasher = PasswordHasher()
# Verified against when the user does not exist, so timing does not reveal usernames.
_DUMMY_HASH = _hasher.hash("greenroom-dummy-password")
REFUSED_RETRY_S = 1
# The pool threads' niceness: the event loop (0) gets about ten times their CPU share when
# both want it, while other processes at 0 (replicas on an `up` host) do not starve logins.
NICE = 10
# The longest a login may wait for its hash before it is refused (429) instead.
MAX_WAIT_S = 5.0
# The mean hash time before any was measured, and the weight of each new one in the mean.
FIRST_HASH_S, NEW_HASH_WEIGHT = 0.25, 0.2


def hash_password(password: str) -> str:
    """An argon2 hash (blocking: use `Passwords.hash` on the event loop)."""
    return _hasher.hash(password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def _low_priority() -> None:
    """Each pool thread's initializer: nice `NICE` for this thread alone (Linux only, where a
    thread id names one thread; elsewhere it would name the whole process)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


def default_threads() -> int:
    """A quarter of this process's cores, 1 to 4: each hash runs 4 lanes of its own."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 1) // 4))


class Passwords:
    """Hash and verify off the event loop: `threads` at once, `queue` more waiting."""

    def __init__(self, threads: int | None = None, queue: int = 32) -> None:
        self.threads = threads or default_threads()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.threads, thread_name_prefix="argon2", initializer=_low_priority)
        self._limit = self.threads + queue
        self._in_pool = 0  # running or waiting in the pool (until the thread is done)
        self.mean_hash_s = FIRST_HASH_S  # of the recent hashes, updated as each ends

    @property
    def in_pool(self) -> int:
        return self._in_pool

    def expected_wait_s(self) -> float:
        """How long a login starting now would wait for its hash to end, by the recent mean."""
        return (self._in_pool // self.threads + 1) * self.mean_hash_s

    async def _run(self, work: Callable[..., T], *args: str | None) -> T:
        if self._in_pool >= self._limit or self.expected_wait_s() > MAX_WAIT_S:
            raise TooManyRequests(f"too many logins in progress; try again in "
                                  f"{REFUSED_RETRY_S} s", {"retry_after_s": REFUSED_RETRY_S},
                                  retry_after_s=REFUSED_RETRY_S)
        loop = asyncio.get_running_loop()
        self._in_pool += 1

        def timed() -> T:
            started = time.perf_counter()
            try:
                return work(*args)
            finally:
                took = time.perf_counter() - started
                # Counted until the thread has finished, even if the request went away first.
                loop.call_soon_threadsafe(self._left, took)

        return await asyncio.wrap_future(self._executor.submit(timed))

    def _left(self, took_s: float) -> None:
        self._in_pool -= 1
        self.mean_hash_s += NEW_HASH_WEIGHT * (took_s - self.mean_hash_s)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True if `password` matches `stored`; None (no such user) never matches but costs
        the same."""
        return await self._run(_verify, stored, password)

    async def hash(self, password: str) -> str:
        return await self._run(hash_password, password)

    def needs_rehash(self, stored: str) -> bool:
        return _hasher.check_needs_rehash(stored)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
