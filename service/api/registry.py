"""Accounts and the model registry under /api/v2: users, login, API keys, models, grants."""

import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from db import api_keys, models, permissions, users
from db.api_keys import ApiKey
from db.users import User
from edge.auth.authentication import require_secret
from edge.auth.locators import path_param
from edge.auth.principal_cache import PRINCIPALS
from edge.auth.rules import ADMIN, OWNER, PUBLIC, READ, USER
from edge.errors import ApiError
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.responses import json_response
from edge.route_spec import RouteSpec
from schemas.auth import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    GrantOut,
    GrantRequest,
    LoginRequest,
    LoginResponse,
    ModelOut,
    PasswordChange,
    UserCreate,
    UserOut,
    UserStatus,
)
from schemas.bazaar import Empty
from schemas.errors import Forbidden, Unauthorized
from schemas.models import ModelCreate
from schemas.queue import AUTH_CHANNEL, AccessChange, AccessChanged
from service.domain import accounts, catalog, model_upload
from service.keys import LOGIN_THROTTLE, PASSWORDS, REDIS

T = TypeVar("T")
MODEL = "{model_id:[^/]+(?:/[^/]+)?}"


def _user_out(user: User) -> UserOut:
    return UserOut(id=user.id, username=user.username, email=user.email,
                   is_admin=user.is_admin, created_at=user.created_at, disabled=user.disabled)


def _key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(id=key.id, name=key.name, expires_at=key.expires_at,
                     revoked_at=key.revoked_at, created_at=key.created_at,
                     lane=key.lane,  # type: ignore[arg-type]  # the column's CHECK
                     requests_per_s=key.requests_per_s, tokens_per_s=key.tokens_per_s)



async def announce_access_change(app: web.Application, what: AccessChange) -> None:
    """Tell every gateway (and API) that access changed, so cached decisions are dropped
    now. Best effort: if Redis cannot take the message, the caches still expire within
    `access_cache_ttl_s` (1 s by default)."""
    cache = app.get(PRINCIPALS)
    if cache is not None:
        cache.clear()  # this process at once, before its next request
    with contextlib.suppress(Exception):
        await app[REDIS].publish(AUTH_CHANNEL, AccessChanged(what).encode())

async def _throttled(request: web.Request, username: str,
                     check: Callable[[], Awaitable[T]]) -> T:
    """Run a password check under the login throttle (service/domain/login_throttle.py): 429
    while this (username, address) waits, then the address's budget, then the check; a wrong
    password is counted against (username, address)."""
    throttle, address = request.app[LOGIN_THROTTLE], request.remote or "unknown"
    throttle.refuse_during_wait(username, address)  # before argon2: a wait must cost guesses
    # Counted against the address from here (concurrent guesses see each other).
    mark = throttle.attempt(address)
    try:
        result = await check()
    except (Unauthorized, Forbidden):
        throttle.failed(username, address)  # 429 if it came during a wait
        raise  # a wrong password stays counted
    except BaseException:
        throttle.release(address, mark)
        raise
    throttle.succeeded(username, address, mark)
    return result


async def login(request: web.Request) -> web.Response:
    """Exchange a username and password for a bearer token."""
    body: LoginRequest = call_of(request).body
    user, token, expires_at = await _throttled(request, body.username, lambda: accounts.login(
        request.app[PG], request.app[PASSWORDS], require_secret(request.app[SETTINGS]),
        body.username, body.password))
    return json_response(LoginResponse(access_token=token, expires_at=expires_at,
                                       user=_user_out(user)))


async def change_password(request: web.Request) -> web.Response:
    """Change the caller's password (the current one is required); every token of the
    caller issued before stops working, and the answer carries a fresh one."""
    body: PasswordChange = call_of(request).body
    principal = call_of(request).principal
    assert principal.user_id is not None and principal.username is not None
    user, token, expires_at = await _throttled(
        request, principal.username, lambda: accounts.change_password(
            request.app[PG], request.app[PASSWORDS], require_secret(request.app[SETTINGS]),
            principal.user_id or 0, body.current_password, body.new_password))
    await announce_access_change(request.app, AccessChange.user)
    return json_response(LoginResponse(access_token=token, expires_at=expires_at,
                                       user=_user_out(user)))


async def logout(request: web.Request) -> web.Response:
    """Revoke every token of the caller (log out everywhere); API keys are kept (revoke
    them one by one)."""
    user_id = call_of(request).principal.user_id
    assert user_id is not None
    await accounts.revoke_tokens(request.app[PG], user_id)
    await announce_access_change(request.app, AccessChange.user)
    return json_response(Empty())


async def set_user_status(request: web.Request) -> web.Response:
    """Disable a user (administrators only): no login, and every token and API key of theirs
    refused at once; or enable them again (their old tokens stay revoked)."""
    call = call_of(request)
    body: UserStatus = call.body
    assert call.principal.user_id is not None
    user = await accounts.set_disabled(request.app[PG], request.match_info["username"],
                                       body.disabled, call.principal.user_id)
    await announce_access_change(request.app, AccessChange.user)
    return json_response(_user_out(user))


async def create_user(request: web.Request) -> web.Response:
    """Create a user (administrators only)."""
    user = await accounts.create_user(request.app[PG], call_of(request).body,
                                      request.app[PASSWORDS])
    return json_response(_user_out(user), 201)


async def list_users(request: web.Request) -> web.Response:
    return json_response([_user_out(u) for u in await users.list_all(request.app[PG])])


async def me(request: web.Request) -> web.Response:
    user_id = call_of(request).principal.user_id
    assert user_id is not None
    user = await users.get(request.app[PG], user_id)
    assert user is not None
    return json_response(_user_out(user))


async def create_api_key(request: web.Request) -> web.Response:
    """A new API key for the caller; the key is in this response only."""
    call = call_of(request)
    assert call.principal.user_id is not None
    row, key = await accounts.create_api_key(request.app[PG], call.principal.user_id, call.body)
    return json_response(ApiKeyCreated(**_key_out(row).model_dump(), key=key), 201)


async def list_api_keys(request: web.Request) -> web.Response:
    user_id = call_of(request).principal.user_id
    assert user_id is not None
    return json_response([_key_out(k) for k in await api_keys.list_for_user(request.app[PG],
                                                                           user_id)])


async def revoke_api_key(request: web.Request) -> web.Response:
    """Revoke one of the caller's keys (an administrator: anyone's). Revoking a key that is
    revoked already answers the same and changes nothing; a key that is not the caller's or
    not there: 404."""
    principal = call_of(request).principal
    assert principal.user_id is not None
    try:
        key_id = int(request.match_info["key_id"])
    except ValueError:
        raise ApiError(404, "API key not found") from None
    if await accounts.revoke_api_key(request.app[PG], key_id, principal.user_id,
                                     principal.is_admin):
        # Only a key revoked now is news: every message flushes every cache everywhere.
        await announce_access_change(request.app, AccessChange.api_key)
    return json_response(Empty())


async def register_model(request: web.Request) -> web.Response:
    """Register a model owned by the caller."""
    call = call_of(request)
    assert call.principal.user_id is not None
    model = await catalog.register(request.app[PG], request.app[SETTINGS], call.principal,
                                   call.body)
    return json_response(await catalog.describe(request.app[PG], model, call.principal), 201)


# Python's `requests` sends str(True): "True" and "False" are taken as their lower case.
FLAGS = {"true": True, "True": True, "1": True, "yes": True,
         "false": False, "False": False, "0": False, "no": False}


def _flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter (absent: no); any other value is a 422."""
    value = request.query.get(name)
    if value is None:
        return False
    if value not in FLAGS:
        raise ApiError(422, f"invalid request: {name} must be one of {', '.join(FLAGS)}")
    return FLAGS[value]


async def upload_model(request: web.Request) -> web.Response:
    """Upload the model's weights: a tar.gz or zip of a sentence-transformers folder."""
    call = call_of(request)
    assert call.model is not None
    allow_pickle = _flag(request, "allow_pickle")
    if allow_pickle and not call.principal.is_admin:
        raise ApiError(403, "only administrators may allow pickled weights")
    model = await model_upload.upload(request.app[PG], request.app[SETTINGS], call.model,
                                      request.content.iter_chunked(model_upload.CHUNK),
                                      allow_pickle, request.content_length)
    return json_response(await catalog.describe(request.app[PG], model, call.principal))


async def list_models(request: web.Request) -> web.Response:
    """Every model the caller can read."""
    principal = call_of(request).principal
    pool = request.app[PG]
    found = await models.list_visible(pool, principal.user_id, principal.is_admin)
    return json_response([await catalog.describe(pool, m, principal) for m in found])


async def show_model(request: web.Request) -> web.Response:
    call = call_of(request)
    assert call.model is not None
    return json_response(await catalog.describe(request.app[PG], call.model, call.principal))


async def list_grants(request: web.Request) -> web.Response:
    model = call_of(request).model
    assert model is not None
    grants = await permissions.list_for_model(request.app[PG], model.id)
    return json_response([GrantOut(model_id=g.model_id, username=g.username,
                                   permission=g.permission, expires_at=g.expires_at)
                          for g in grants])


async def grant(request: web.Request) -> web.Response:
    """Give a user read, write or owner permission on the model, optionally until a time."""
    call = call_of(request)
    assert call.model is not None
    body: GrantRequest = call.body
    await catalog.grant(request.app[PG], call.model, body)
    await announce_access_change(request.app, AccessChange.grant)
    return json_response(GrantOut(model_id=call.model.id, username=body.username,
                                  permission=body.permission, expires_at=body.expires_at))


async def revoke(request: web.Request) -> web.Response:
    model = call_of(request).model
    assert model is not None
    await catalog.revoke(request.app[PG], model, request.match_info["username"])
    await announce_access_change(request.app, AccessChange.grant)
    return json_response(Empty())


ROUTES = [
    RouteSpec("POST", "/api/v2/auth/login", login, PUBLIC, LoginRequest, LoginResponse,
              summary="Log in"),
    RouteSpec("POST", "/api/v2/users", create_user, ADMIN, UserCreate, UserOut, status=201,
              summary="Create a user"),
    RouteSpec("GET", "/api/v2/users", list_users, ADMIN, None, list[UserOut],
              summary="List users"),
    RouteSpec("GET", "/api/v2/users/me", me, USER, None, UserOut, summary="The caller"),
    RouteSpec("POST", "/api/v2/users/me/password", change_password, USER, PasswordChange,
              LoginResponse, summary="Change the caller's password (revokes its tokens)"),
    RouteSpec("PUT", "/api/v2/users/{username}/status", set_user_status, ADMIN, UserStatus,
              UserOut, summary="Disable or enable a user"),
    RouteSpec("POST", "/api/v2/auth/logout", logout, USER, None, Empty,
              summary="Revoke every token of the caller"),
    RouteSpec("POST", "/api/v2/auth/api-keys", create_api_key, USER, ApiKeyCreate,
              ApiKeyCreated, status=201, summary="Create an API key"),
    RouteSpec("GET", "/api/v2/auth/api-keys", list_api_keys, USER, None, list[ApiKeyOut],
              summary="List the caller's API keys"),
    RouteSpec("DELETE", "/api/v2/auth/api-keys/{key_id}", revoke_api_key, USER, None, Empty,
              summary="Revoke an API key"),
    RouteSpec("POST", "/api/v2/models", register_model, USER, ModelCreate, ModelOut,
              status=201, summary="Register a model"),
    RouteSpec("GET", "/api/v2/models", list_models, USER, None, list[ModelOut],
              summary="List readable models"),
    RouteSpec("GET", f"/api/v2/models/{MODEL}/permissions", list_grants, OWNER, None,
              list[GrantOut], path_param("model_id"), summary="List grants"),
    RouteSpec("PUT", f"/api/v2/models/{MODEL}/permissions", grant, OWNER, GrantRequest,
              GrantOut, path_param("model_id"), summary="Grant a permission"),
    RouteSpec("DELETE", f"/api/v2/models/{MODEL}/permissions/{{username}}", revoke, OWNER,
              None, Empty, path_param("model_id"), summary="Revoke a grant"),
    RouteSpec("POST", f"/api/v2/models/{MODEL}/upload", upload_model, OWNER, None, ModelOut,
              path_param("model_id"), query=(("allow_pickle", False,
                      {"type": "string", "enum": [*FLAGS]}),),
              raw_body=("application/gzip", "application/zip", "application/octet-stream"),
              summary="Upload a model (tar.gz or zip of a sentence-transformers folder)"),
    RouteSpec("GET", f"/api/v2/models/{MODEL}", show_model, READ, None, ModelOut,
              path_param("model_id"), summary="Show a model"),
]
