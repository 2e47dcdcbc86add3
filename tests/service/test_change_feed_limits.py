"""Issue 25, review M12: the change feed and the auth channel cannot be used to amplify load.

On 4861aa2 a user could hold any number of change streams open (each re-checking its
caller on every access change), and every revoke of an already revoked key answered 200
and published on the auth channel, which flushes every API's and gateway's caches.
"""

from collections.abc import Callable

import aiohttp
import asyncpg
import pytest

from schemas.settings import Settings
from tests.conftest import Proc
from tests.support.accounts import call, eventually, make_user
from tests.support.auth_channel import counting_auth_channel
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

V2 = "/api/v2"


@pytest.fixture
async def capped_api(spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
                     clean: None) -> str:
    port = free_port("127.0.0.1")
    spawn("service", api_port=port, changes_max_streams_per_user=2, changes_max_streams=3)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(anon_http, base + "/healthz")
    return base


async def _open(http: aiohttp.ClientSession, api: str, headers: dict[str, str],
                timeout_s: float = 30) -> aiohttp.ClientResponse:
    """A change stream, held open once its `hello` came (the server holds its slot)."""
    resp = await http.get(f"{api}{V2}/changes?timeout={timeout_s}", headers=headers)
    if resp.status == 200:
        assert b"event: hello" in await resp.content.readuntil(b"\n\n")
    return resp


async def test_change_streams_are_capped_per_user_and_per_process(
        capped_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    api, http = capped_api, anon_http
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    _, carol = await make_user(pool, "carol")
    held = [await _open(http, api, alice, timeout_s=2) for _ in range(2)]
    assert [r.status for r in held] == [200, 200]

    refused = await _open(http, api, alice)
    body = await refused.json()
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert body["status_code"] == 429 and body["detail"] == {"limit": 2}
    assert "per user" in body["message"]

    held.append(await _open(http, api, bob))
    assert held[-1].status == 200  # another user has streams of their own...
    refused = await _open(http, api, carol)
    body = await refused.json()
    assert refused.status == 429 and body["detail"] == {"limit": 3}  # ...up to the process's

    for resp in held[:2]:  # alice's end by themselves (timeout=2) and free their slots
        await resp.read()
        resp.release()
    again = await _open(http, api, alice)
    assert again.status == 200
    for resp in (held[2], again):
        resp.close()


async def test_revoking_a_revoked_foreign_or_missing_key_publishes_nothing(
        api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        settings: Settings) -> None:
    http = anon_http
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    _, key = await call(http, "POST", f"{api}{V2}/auth/api-keys", headers=alice,
                        json={"name": "x"})
    url = f"{api}{V2}/auth/api-keys/{key['id']}"
    async with counting_auth_channel(settings.require_redis_url()) as channel:
        status, _ = await call(http, "DELETE", url, headers=bob)
        assert status == 404, "another user's key"
        status, _ = await call(http, "DELETE", f"{api}{V2}/auth/api-keys/999999", headers=alice)
        assert status == 404
        assert await channel.settled(0) == []
        status, body = await call(http, "DELETE", url, headers=alice)
        assert status == 200 and body == {}
        assert await eventually(lambda: channel.settled(1), 5) == [b"api_key"]
        for _ in range(20):  # the review's loop: each used to flush every cache
            status, body = await call(http, "DELETE", url, headers=alice)
            assert status == 200 and body == {}, "revoked already: the same answer"
        assert await channel.settled(1) == [b"api_key"]
    _, listed = await call(http, "GET", f"{api}{V2}/auth/api-keys", headers=alice)
    assert listed[0]["revoked_at"] is not None
