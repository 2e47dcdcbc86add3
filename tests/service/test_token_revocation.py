"""Issue 25, review M11: tokens can be revoked, accounts have a lifecycle, and a weak
signing key is refused.

On 4861aa2 a user JWT lived its 12 h whatever happened: there was no logout, no password
change and no way to disable a user, and any non-empty GREENROOM_SECRET_KEY was accepted.
"""

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from db import users
from schemas.settings import Settings
from tests.conftest import Proc, bearer, start_gateway
from tests.service.test_auth_matrix import SERVED_NAME, _serve_model, stub_replica
from tests.support.accounts import call, eventually, make_user
from tests.support.auth_channel import AuthChannel, counting_auth_channel
from tests.support.shared_api import api_process
from worker.runtimes.process import free_port

V2 = "/api/v2"
LONG_CACHE_S = 60.0  # caches that outlive the test: only the auth channel can clear them


@pytest.fixture(scope="module")
async def module_long_cache_api(database_url: str, backing: dict[str, str],
                                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """One API per module whose principal cache keeps an answer for a minute: each test's
    users (and so their tokens) are new, so no answer cached for one test meets another."""
    async with api_process(database_url, backing, tmp_path_factory.mktemp("long-cache-api"),
                           access_cache_ttl_s=LONG_CACHE_S) as base:
        yield base


@pytest.fixture
async def long_cache_api(module_long_cache_api: str, clean: None) -> str:
    """The module's long-cache API, its database and Redis emptied before the test."""
    return module_long_cache_api


@pytest.fixture
async def auth_channel(settings: Settings) -> AsyncIterator[AuthChannel]:
    async with counting_auth_channel(settings.require_redis_url()) as seen:
        yield seen


async def _login(http: aiohttp.ClientSession, api: str, username: str,
                 password: str) -> tuple[int, Any]:
    return await call(http, "POST", f"{api}{V2}/auth/login",
                      json={"username": username, "password": password})


async def _me(http: aiohttp.ClientSession, api: str, headers: dict[str, str]) -> int:
    status, _ = await call(http, "GET", f"{api}{V2}/users/me", headers=headers)
    return status


async def test_logout_revokes_every_token_of_the_user_at_the_api_and_the_gateway(
        long_cache_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        spawn: Callable[..., Proc], hashing_model: Any, auth_channel: AuthChannel) -> None:
    api, http = long_cache_api, anon_http
    await make_user(pool, "alice", password="alice-password-1")
    model = await hashing_model("private-one")
    await pool.execute("UPDATE models SET access_level = 'private' WHERE id = $1", model)
    gateway = await start_gateway(spawn, http, access_cache_ttl_s=LONG_CACHE_S)
    async with stub_replica() as endpoint:
        await _serve_model(pool, model, endpoint)
        first, second = [bearer((await _login(http, api, "alice", "alice-password-1"))[1]
                                ["access_token"]) for _ in range(2)]

        async def served(headers: dict[str, str]) -> int:
            async with http.post(f"{gateway}/serve/{SERVED_NAME}/embed",
                                 json={"inputs": "x"}, headers=headers) as resp:
                return resp.status

        await eventually(lambda: _ok(served(first)), 20, "the gateway serves alice")
        assert await _me(http, api, first) == 200 and await _me(http, api, second) == 200

        status, body = await call(http, "POST", f"{api}{V2}/auth/logout", headers=first)
        assert status == 200 and body == {}
        # Both of alice's tokens, though cached for a minute by the API and the gateway.
        assert await _me(http, api, first) == 401 and await _me(http, api, second) == 401
        await eventually(lambda: _is(served(second), 401), 10, "the gateway refuses")
        assert await served(first) == 401
        status, body = await _login(http, api, "alice", "alice-password-1")
        assert status == 200 and await served(bearer(body["access_token"])) == 200
    assert await eventually(lambda: auth_channel.settled(1), 5) == [b"user"]


async def _ok(status: Any) -> bool:
    return bool(await status == 200)


async def _is(status: Any, want: int) -> bool:
    return bool(await status == want)


async def test_password_change_needs_the_current_one_and_revokes_every_older_token(
        long_cache_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        auth_channel: AuthChannel) -> None:
    api, http = long_cache_api, anon_http
    _, minted = await make_user(pool, "alice", password="old-password-1")
    _, body = await _login(http, api, "alice", "old-password-1")
    old = bearer(body["access_token"])
    url = f"{api}{V2}/users/me/password"
    status, body = await call(http, "POST", url, headers=old, json={
        "current_password": "not-it", "new_password": "new-password-1"})
    assert status == 403 and body["message"] == "the current password is wrong"
    status, body = await call(http, "POST", url, headers=old, json={
        "current_password": "old-password-1", "new_password": "old-password-1"})
    assert status == 422
    status, body = await call(http, "POST", url, headers=old, json={
        "current_password": "old-password-1", "new_password": "new-password-1"})
    assert status == 200 and body["user"]["username"] == "alice", body
    fresh = bearer(body["access_token"])
    assert await _me(http, api, old) == 401 and await _me(http, api, minted) == 401
    assert await _me(http, api, fresh) == 200
    assert (await _login(http, api, "alice", "old-password-1"))[0] == 401
    assert (await _login(http, api, "alice", "new-password-1"))[0] == 200
    assert await eventually(lambda: auth_channel.settled(1), 5) == [b"user"]


async def test_a_disabled_user_cannot_log_in_and_their_tokens_and_api_keys_stop_working(
        long_cache_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        admin_headers: dict[str, str], auth_channel: AuthChannel) -> None:
    api, http = long_cache_api, anon_http
    _, token = await make_user(pool, "bob", password="bob-password-1")
    _, created = await call(http, "POST", f"{api}{V2}/auth/api-keys", headers=token,
                            json={"name": "ci"})
    key = bearer(created["key"])
    assert await _me(http, api, token) == 200 and await _me(http, api, key) == 200

    status, _ = await call(http, "PUT", f"{api}{V2}/users/bob/status", headers=token,
                           json={"disabled": True})
    assert status == 403, "administrators only"
    status, bob = await call(http, "PUT", f"{api}{V2}/users/bob/status", headers=admin_headers,
                             json={"disabled": True})
    assert status == 200 and bob["disabled"] is True and bob["username"] == "bob"
    assert await _me(http, api, token) == 401 and await _me(http, api, key) == 401
    status, body = await _login(http, api, "bob", "bob-password-1")
    assert status == 401 and body["message"] == "invalid username or password"
    _, listed = await call(http, "GET", f"{api}{V2}/users", headers=admin_headers)
    assert {u["username"]: u["disabled"] for u in listed} == {"admin": False, "bob": True}

    status, body = await call(http, "PUT", f"{api}{V2}/users/admin/status",
                              headers=admin_headers, json={"disabled": True})
    assert status == 403 and "cannot disable themselves" in body["message"]
    status, _ = await call(http, "PUT", f"{api}{V2}/users/nobody/status",
                           headers=admin_headers, json={"disabled": True})
    assert status == 404

    status, bob = await call(http, "PUT", f"{api}{V2}/users/bob/status", headers=admin_headers,
                             json={"disabled": False})
    assert status == 200 and bob["disabled"] is False
    assert (await _login(http, api, "bob", "bob-password-1"))[0] == 200
    assert await _me(http, api, key) == 200, "the API key works again"
    assert await _me(http, api, token) == 401, "tokens from before the disable stay revoked"
    assert await eventually(lambda: auth_channel.settled(2), 5) == [b"user", b"user"]


async def test_a_token_of_an_older_version_is_refused(
        api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    """The check sits in _from_claims: bumping the column alone revokes (no cache at 0 s)."""
    user, token = await make_user(pool, "carol")
    assert await _me(anon_http, api, token) == 200
    await users.revoke_tokens(pool, user.id)
    await asyncio.sleep(1.1)  # the API's principal cache (1 s) had no message this time
    status, body = await call(anon_http, "GET", f"{api}{V2}/users/me", headers=token)
    assert status == 401 and "revoked" in body["message"]


SHORT = "x" * 8 + "changeme" + "0123456789abcde"  # 31 bytes


@pytest.mark.parametrize(("key", "reason"), [
    ("changeme", "is 8 bytes; it must be at least 32 random bytes"),
    (SHORT, "is 31 bytes"),
    ("a" * 64, "fewer than 8 distinct characters"),
    ("ab" * 32, "fewer than 8 distinct characters"),
])
def test_a_short_or_patterned_secret_key_is_refused_at_start(
        settings: Settings, key: str, reason: str) -> None:
    from gateway.app import create_gateway_app
    from service.app import create_app
    from worker.settings import refuse_weak_secret

    weak = settings.model_copy(update={"secret_key": SecretStr(key)})
    for start in (create_app, create_gateway_app, refuse_weak_secret):
        with pytest.raises(RuntimeError, match=reason) as refused:
            start(weak)
        assert key not in str(refused.value), "the key itself is never printed"
    strong = settings.model_copy(update={"secret_key": SecretStr(secrets.token_urlsafe(32))})
    create_app(strong)
    refuse_weak_secret(strong)


async def test_the_api_process_exits_with_the_reason_on_a_weak_key(
        spawn: Callable[..., Proc], tmp_path: Path) -> None:
    proc = spawn("service", api_port=free_port("127.0.0.1"), secret_key=SecretStr("changeme"))
    code = await asyncio.to_thread(proc.popen.wait, 60)
    assert code != 0
    log = proc.log.read_text()
    assert "at least 32 random bytes" in log and "changeme" not in log


def test_up_draws_a_key_of_at_least_32_bytes(tmp_path: Path) -> None:
    from launch import stack_state
    from schemas.tokens import weak_secret_reason

    key = stack_state.secret_key(tmp_path)
    assert len(key.encode()) >= 32 and weak_secret_reason(key) is None
