"""Issue 25, review M2: failed logins are slowed per (username, address) with growing waits;
nobody can lock an account out by guessing at it: the wait is the guesser's address's own,
and during it a login from there is refused before its password is checked (a check would
tell the guesser a right guess from a wrong one, and the wait would slow nothing).

On 4861aa2 ten failures as `ALICE` (or `alice`) from anywhere locked `alice` out of her
right password (429 for 300 s), from every address.
"""

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable

import aiohttp
import asyncpg
import pytest

from service.domain.login_throttle import LoginThrottle, address_key
from tests.conftest import Proc
from tests.support.accounts import call, make_user
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

PASSWORD = "alice-right-password"
BASE_WAIT_S = 5.0  # long enough that a guess sent at once always lands inside the wait


@pytest.fixture
async def waiting_api(spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
                      clean: None) -> str:
    port = free_port("127.0.0.1")
    spawn("service", api_port=port, login_free_failures=5, login_wait_base_s=BASE_WAIT_S,
          login_wait_max_s=300)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(anon_http, base + "/healthz")
    return base


@pytest.fixture
async def second_address() -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose requests come from 127.0.0.2 (another address on loopback)."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def _login(http: aiohttp.ClientSession, base: str, user: str,
                 password: str) -> tuple[int, dict[str, str], dict[str, object]]:
    async with http.post(f"{base}/api/v2/auth/login",
                         json={"username": user, "password": password}) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_guessing_as_ALICE_and_alice_never_locks_alice_out_of_her_right_password(
        waiting_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        second_address: aiohttp.ClientSession) -> None:
    await make_user(pool, "alice", password=PASSWORD)
    statuses = []
    for name in ("ALICE",) * 12 + ("alice",) * 12:
        status, _, body = await _login(anon_http, waiting_api, name, "wrong")
        statuses.append(status)
        assert status in (401, 429), body
    assert 429 in statuses, statuses  # the guesser is slowed: even a right guess waits...
    status, headers, body = await _login(anon_http, waiting_api, "alice", PASSWORD)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= BASE_WAIT_S, body
    # ...but alice's right password from her own address passes at once.
    status, _, body = await _login(second_address, waiting_api, "alice", PASSWORD)
    assert status == 200, body
    status, me = await call(anon_http, "GET", f"{waiting_api}/api/v2/users/me",
                            headers={"Authorization": f"Bearer {body['access_token']}"})
    assert status == 200 and me["username"] == "alice"


async def test_each_wrong_password_past_the_free_ones_makes_the_wait_longer(
        spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        clean: None) -> None:
    port = free_port("127.0.0.1")
    spawn("service", api_port=port, login_free_failures=2, login_wait_base_s=1.0,
          login_wait_max_s=300)
    api = f"http://127.0.0.1:{port}"
    await wait_for_http(anon_http, api + "/healthz")
    await make_user(pool, "alice", password=PASSWORD)
    statuses, waits = [], []
    for _ in range(4):
        status, headers, body = await _login(anon_http, api, "alice", "wrong")
        statuses.append(status)
        if status == 429:
            assert body["status_code"] == 429 and "too many failed logins" in str(body["message"])
            assert body["detail"] == {"retry_after_s": int(headers["Retry-After"])}
            waits.append(int(headers["Retry-After"]))
    # 2 free, the 3rd starts a wait of 1 s; the 4th, sent during it, is refused unchecked
    assert statuses == [401] * 3 + [429], statuses
    await asyncio.sleep(1.2)
    # Past the wait a wrong password is checked (401) and doubles the wait: 2 s, then 4 s.
    for expected in (2, 4):
        status, _, _ = await _login(anon_http, api, "alice", "wrong")
        assert status == 401
        status, headers, _ = await _login(anon_http, api, "alice", "wrong")
        assert status == 429
        waits.append(int(headers["Retry-After"]))
        assert waits[-1] == expected, waits
        await asyncio.sleep(expected + 0.2)


async def test_another_address_is_not_slowed_by_the_first_ones_failures(
        waiting_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        second_address: aiohttp.ClientSession) -> None:
    await make_user(pool, "alice", password=PASSWORD)
    for _ in range(11):
        status, _, _ = await _login(anon_http, waiting_api, "alice", "wrong")
    assert status == 429
    # From 127.0.0.2 alice's first wrong password is an ordinary 401, not a wait...
    status, _, body = await _login(second_address, waiting_api, "alice", "typo")
    assert status == 401 and body["message"] == "invalid username or password"
    # ...and her right one a token.
    status, _, body = await _login(second_address, waiting_api, "alice", PASSWORD)
    assert status == 200, body


def test_an_ipv6_address_counts_as_its_64() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert address_key("10.0.0.7") == "10.0.0.7" and address_key(None) == "unknown"
    throttle = LoginThrottle(free_failures=0, wait_base_s=60, wait_max_s=60,
                             max_per_address=100, window_s=60)
    first = ipaddress.ip_address("2001:db8:1:2::1")
    throttle.failed("alice", str(first))
    assert throttle.wait_left("alice", str(first + 12345)) > 0  # the same /64 waits too
    assert throttle.wait_left("alice", "2001:db8:1:3::1") == 0


def test_the_wait_grows_to_its_cap_and_the_free_failures_cost_nothing() -> None:
    throttle = LoginThrottle(free_failures=3, wait_base_s=2, wait_max_s=30,
                             max_per_address=100, window_s=60)
    assert [throttle.wait_after(n) for n in range(1, 10)] == [0, 0, 0, 2, 4, 8, 16, 30, 30]
