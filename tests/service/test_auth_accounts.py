"""Accounts: the first admin from the CLI, login, users, API keys, the model registry."""

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from schemas.settings import Settings
from tests.conftest import REPO, bearer, settings_env
from tests.support.accounts import call
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

V2 = "/api/v2"


async def _login(http: aiohttp.ClientSession, api: str, username: str,
                 password: str) -> dict[str, str]:
    status, body = await call(http, "POST", f"{api}{V2}/auth/login",
                              json={"username": username, "password": password})
    assert status == 200, body
    assert set(body) == {"access_token", "token_type", "expires_at", "user"}
    assert body["token_type"] == "bearer" and "password" not in str(body["user"])
    return bearer(body["access_token"])


async def test_first_admin_from_the_cli_then_users_and_login(
        api: str, anon_http: aiohttp.ClientSession, settings: Settings) -> None:
    env = settings_env(settings) | {"GREENROOM_NEW_PASSWORD": "root-password-1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "launch.cli", "users", "create", "root", "--admin", cwd=REPO,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = (b.decode() for b in await asyncio.wait_for(proc.communicate(), 60))
    assert proc.returncode == 0, err
    assert "root (admin)" in out and "root-password-1" not in out + err
    root = await _login(anon_http, api, "root", "root-password-1")
    status, me = await call(anon_http, "GET", f"{api}{V2}/users/me", headers=root)
    assert status == 200 and me["username"] == "root" and me["is_admin"] is True

    status, bob = await call(anon_http, "POST", f"{api}{V2}/users", headers=root,
                             json={"username": "bob", "password": "bob-password-1"})
    assert status == 201 and bob["is_admin"] is False and "password" not in bob
    status, body = await call(anon_http, "POST", f"{api}{V2}/users", headers=root,
                              json={"username": "bob", "password": "another-pass"})
    assert status == 409 and body["status_code"] == 409
    status, body = await call(anon_http, "POST", f"{api}{V2}/users", headers=root,
                              json={"username": "eve", "password": "short"})
    assert status == 422
    for username, password in (("bob", "wrong-password"), ("nobody", "bob-password-1")):
        status, body = await call(anon_http, "POST", f"{api}{V2}/auth/login",
                                  json={"username": username, "password": password})
        assert status == 401 and body == {"status_code": 401, "detail": None,
                                          "message": "invalid username or password"}
    await _login(anon_http, api, "bob", "bob-password-1")


async def test_api_keys_shown_once_revocable_and_expiring(
        api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        admin_headers: dict[str, str]) -> None:
    http = anon_http
    await call(http, "POST", f"{api}{V2}/users", headers=admin_headers,
               json={"username": "svc", "password": "svc-password-1"})
    svc = await _login(http, api, "svc", "svc-password-1")
    status, created = await call(http, "POST", f"{api}{V2}/auth/api-keys", headers=svc,
                                 json={"name": "ci", "expires_in_days": 30})
    assert status == 201 and created["key"].startswith("gr_") and created["expires_at"]
    key = bearer(created["key"])
    status, listed = await call(http, "GET", f"{api}{V2}/auth/api-keys", headers=svc)
    assert [k["name"] for k in listed] == ["ci"] and "key" not in listed[0]
    assert created["key"] not in str(listed)
    stored = await pool.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", created["id"])
    assert stored != created["key"] and created["key"] not in stored
    status, me = await call(http, "GET", f"{api}{V2}/users/me", headers=key)
    assert status == 200 and me["username"] == "svc"

    status, _ = await call(http, "DELETE", f"{api}{V2}/auth/api-keys/{created['id']}",
                           headers=svc)
    assert status == 200
    status, body = await call(http, "GET", f"{api}{V2}/users/me", headers=key)
    assert status == 401 and body["status_code"] == 401

    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    status, _ = await call(http, "POST", f"{api}{V2}/auth/api-keys", headers=svc,
                           json={"name": "old", "expires_at": past})
    assert status == 422
    _, expiring = await call(http, "POST", f"{api}{V2}/auth/api-keys", headers=svc,
                             json={"name": "soon"})
    await pool.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' "
                       "WHERE id = $1", expiring["id"])
    status, _ = await call(http, "GET", f"{api}{V2}/users/me", headers=bearer(expiring["key"]))
    assert status == 401
    status, _ = await call(http, "GET", f"{api}{V2}/users/me",
                           headers=bearer("gr_never-issued"))
    assert status == 401
    assert (created["lane"], created["requests_per_s"]) == ("interactive", None)
    # Issue 29: a key's lane and limits are set at creation, shown, and checked.
    status, ingest = await call(http, "POST", f"{api}{V2}/auth/api-keys", headers=svc,
                                json={"name": "ingest", "lane": "batch",
                                      "requests_per_s": 50, "tokens_per_s": 1000})
    assert status == 201, ingest
    assert (ingest["lane"], ingest["requests_per_s"], ingest["tokens_per_s"]) == (
        "batch", 50, 1000)
    _, listed = await call(http, "GET", f"{api}{V2}/auth/api-keys", headers=svc)
    assert {k["name"]: k["lane"] for k in listed}["ingest"] == "batch"
    for bad in ({"lane": "urgent"}, {"requests_per_s": 0}, {"tokens_per_s": -1}):
        status, _ = await call(http, "POST", f"{api}{V2}/auth/api-keys", headers=svc,
                               json={"name": "bad"} | bad)
        assert status == 422, bad


async def test_model_registry_and_grants(api: str, anon_http: aiohttp.ClientSession,
                                         admin_headers: dict[str, str]) -> None:
    http = anon_http
    for name in ("owner1", "friend"):
        await call(http, "POST", f"{api}{V2}/users", headers=admin_headers,
                   json={"username": name, "password": f"{name}-password"})
    owner = await _login(http, api, "owner1", "owner1-password")
    friend = await _login(http, api, "friend", "friend-password")
    source = {"backend": "hashing", "dimension": 8}
    status, base = await call(http, "POST", f"{api}{V2}/models", headers=owner,
                              json={"name": "base", "source": source})
    assert status == 201 and base["identifier"] == "owner1/base"
    assert base["access_level"] == "private" and base["train_status"] == "complete"
    status, flow = await call(http, "POST", f"{api}{V2}/models", headers=owner, json={
        "name": "flow", "source": source, "access_level": "protected",
        "default_permission": "read", "dependencies": ["owner1/base"]})
    assert status == 201 and flow["dependencies"] == ["owner1/base"]
    status, _ = await call(http, "POST", f"{api}{V2}/models", headers=owner,
                           json={"name": "base", "source": source})
    assert status == 409
    status, _ = await call(http, "POST", f"{api}{V2}/models", headers=owner,
                           json={"name": "x", "dependencies": ["nobody/none"]})
    assert status == 404  # as for a private one it cannot read (review H1)

    # by id and by owner/name alike; protected is readable by any signed-in user
    for ref in (base["id"], "owner1/base"):
        status, shown = await call(http, "GET", f"{api}{V2}/models/{ref}", headers=owner)
        assert status == 200 and shown["id"] == base["id"]
    status, _ = await call(http, "GET", f"{api}{V2}/models/owner1/base", headers=friend)
    assert status == 404, "private and unreadable: as if missing (review L1)"
    status, _ = await call(http, "GET", f"{api}{V2}/models/owner1/flow", headers=friend)
    assert status == 200
    status, _ = await call(http, "GET", f"{api}{V2}/models/owner1/flow")
    assert status == 401

    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, grant = await call(http, "PUT", f"{api}{V2}/models/owner1/base/permissions",
                               headers=owner, json={"username": "friend", "permission": "read",
                                                    "expires_at": until})
    assert status == 200 and grant["permission"] == "read"
    status, missing = await call(http, "PUT", f"{api}{V2}/models/owner1/base/permissions",
                                 headers=owner, json={"username": "nobody", "permission": "read"})
    assert (status, missing["message"]) == (404, "user 'nobody' not found"), \
        "a grant to no such user: 404 naming the user (tests/fuzz/schemathesis.toml)"
    status, _ = await call(http, "GET", f"{api}{V2}/models/owner1/base", headers=friend)
    assert status == 200
    visible = await _visible(http, api, friend)
    assert visible == ["owner1/base", "owner1/flow"]
    status, _ = await call(http, "POST", f"{api}/api/v2/deploy/owner1/base", headers=friend)
    assert status == 403, "read is not owner"
    status, _ = await call(http, "DELETE", f"{api}{V2}/models/owner1/base/permissions/friend",
                           headers=owner)
    assert status == 200
    status, _ = await call(http, "GET", f"{api}{V2}/models/owner1/base", headers=friend)
    assert status == 404


async def _visible(http: aiohttp.ClientSession, api: str, headers: dict[str, str]) -> Any:
    status, listed = await call(http, "GET", f"{api}{V2}/models", headers=headers)
    assert status == 200
    return sorted(m["identifier"] for m in listed)


def test_the_api_refuses_to_start_without_a_secret_key(settings: Settings) -> None:
    import pytest

    from service.app import create_app

    with pytest.raises(RuntimeError, match="GREENROOM_SECRET_KEY is not set"):
        create_app(settings.model_copy(update={"secret_key": None}))
