"""Issue 25, review M3: argon2 runs off the API's event loop, in a bounded pool.

On 4861aa2 every verify ran on the event loop: 40 failed logins at once held `/healthz`
for 6.5 s. Now `/healthz` answers within 50 ms (p99) while 100 failed logins run at once
against the real API process; the logins past the pool's queue answer 429 at once.
"""

import asyncio
import http.client
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from schemas.errors import TooManyRequests
from service.domain.passwords import Passwords, hash_password
from tests.conftest import Proc
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

LOGINS = 100
P99_LIMIT_S = 0.050
PROBE_EVERY_S = 0.01


@pytest.fixture
async def plain_http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)  # every login on its own connection at once
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def _login(http: aiohttp.ClientSession, base: str, i: int) -> int:
    async with http.post(f"{base}/api/v2/auth/login",
                         json={"username": f"nobody{i}", "password": "x"}) as resp:
        await resp.read()
        return resp.status


def _probe(port: int, stop: threading.Event) -> list[float]:
    """/healthz latencies, one request at a time on a kept-alive connection, from a thread of
    its own (the test's event loop is busy with the logins' clients)."""
    seen = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            seen.append(time.perf_counter() - started)
            assert resp.status == 200
            time.sleep(PROBE_EVERY_S)
    finally:
        conn.close()
    return seen


def _in_own_thread(fn: Callable[..., list[float]], *args: object) -> "asyncio.Future[list[float]]":
    """`fn` in a thread started here, in this process's network namespace (an executor
    thread of the session's loop may have been born in another test's namespace)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[float]] = loop.create_future()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting test
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    threading.Thread(target=run, name="healthz-probe", daemon=True).start()
    return done


@pytest.mark.serial
async def test_healthz_p99_under_50ms_while_100_failed_logins_run_at_once(
        spawn: Callable[..., Proc], plain_http: aiohttp.ClientSession, clean: None) -> None:
    port = free_port("127.0.0.1")
    # The address bound would refuse most of the 100 before any verify: lift it, so the
    # logins reach argon2 (unknown users: each verifies against the dummy hash).
    spawn("service", api_port=port, login_max_failures_per_address=10_000)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(plain_http, base + "/healthz")
    await _login(plain_http, base, -1)  # the first login's imports and connections

    stop = threading.Event()
    probe = _in_own_thread(_probe, port, stop)
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    statuses = await asyncio.gather(*(_login(plain_http, base, i) for i in range(LOGINS)))
    took = time.perf_counter() - started
    stop.set()
    latencies = sorted(await probe)

    assert set(statuses) <= {401, 429}, statuses
    refused = statuses.count(429)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"\nhealthz while {LOGINS} failed logins ran at once ({took:.1f} s): "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms "
          f"over {len(latencies)} probes; logins: {statuses.count(401)} answered 401 "
          f"(verified), {refused} answered 429 (pool queue full)")
    assert len(latencies) >= 20, "the probe ran through the logins"
    assert statuses.count(401) >= 10, "the logins did reach argon2"
    assert p99 < P99_LIMIT_S, f"healthz p99 {p99 * 1000:.1f} ms"


async def test_the_hash_pool_refuses_past_its_queue_and_counts_until_the_thread_ends() -> None:
    passwords = Passwords(threads=1, queue=2)
    stored = hash_password("right")
    try:
        results = await asyncio.gather(*(passwords.verify(stored, f"guess{i}")
                                         for i in range(10)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, TooManyRequests)]
        assert results[:3] == [False, False, False] and len(refused) == 7
        assert refused[0].retry_after_s == 1
        assert passwords.in_pool == 0
        # A login that went away (cancelled) still holds its place until its hash ends.
        first = asyncio.ensure_future(passwords.verify(stored, "right"))
        await asyncio.sleep(0.01)
        first.cancel()
        assert passwords.in_pool == 1
        # An unknown user (no stored hash) costs a verify too, and never matches.
        assert await passwords.verify(None, "right") is False
        assert await passwords.verify(stored, "right") is True
    finally:
        passwords.close()


async def test_the_hash_pool_refuses_a_login_whose_wait_would_pass_its_bound() -> None:
    """On a busy host (hashes of 2.45 s; 2 s were seen under CI's fuzzing) the third login
    in line would wait 7.35 s, past MAX_WAIT_S: 429 at once, not a client's timeout. (The
    mean sits just under MAX_WAIT_S / 2, so the first two are taken, and above the hashes
    measured here even at load 10, about 2.1 s, so it must come down.)"""
    passwords = Passwords(threads=1, queue=100)
    passwords.mean_hash_s = 2.45
    stored = hash_password("right")
    try:
        results = await asyncio.gather(*(passwords.verify(stored, f"guess{i}")
                                         for i in range(5)), return_exceptions=True)
        assert results[:2] == [False, False], results
        assert all(isinstance(r, TooManyRequests) for r in results[2:]), results
        assert passwords.mean_hash_s < 2.45, "the mean follows the hashes measured"
    finally:
        passwords.close()
