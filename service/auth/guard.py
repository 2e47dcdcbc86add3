"""Who is calling and what they may do (DESIGN.md §9), and the route table that says so.

Every route is declared as a `RouteSpec` (method, path, handler, auth requirement,
request and response models). `register` wraps each handler in `guarded`, which
authenticates the bearer token, parses the body, finds the model the request names and
checks the caller's permission on it, in that order: 401, then 400/422, then 404, then
403. The table is kept on the app, for the authorisation-matrix test and the OpenAPI
document.
"""

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
from aiohttp import web
from pydantic import BaseModel

from db import api_keys, deployments, models, permissions, users
from db.models import Model
from db.permissions import Grant
from schemas.auth import ANONYMOUS, Permission, Principal
from schemas.errors import Forbidden, Invalid, NotFound, Unauthorized
from schemas.settings import Settings
from schemas.tokens import Claims, InvalidToken, decode
from service.auth.principal_cache import PRINCIPALS
from service.keys import GATEWAY, PG, SETTINGS
from service.web.parsing import parse_body

API_KEY_PREFIX = "gr_"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Locator = Callable[[web.Request, Any], Awaitable[str]]
# public: no token looked at. optional: a bad token counts as none (seed 000's
# verify_access_token_no_throw). user/admin: any signed-in user / an admin.
# read/write/owner: that permission on the model the request names. job: a live job
# token (the model is the token's). job_model: a job token of the model in the path.
# update: an update token. inference: public models need no token, others read access.
Auth = Literal["public", "optional", "user", "admin", "read", "write", "owner", "job",
               "job_model", "update", "inference"]
MODEL_LEVELS: dict[str, Permission] = {
    "read": Permission.read, "write": Permission.write, "owner": Permission.owner}


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route of a surface: what it takes, what it answers and who may call it."""

    method: str
    path: str
    handler: Handler
    auth: Auth
    request_model: type[BaseModel] | None = None
    response_model: Any = None
    locate: Locator | None = None
    status: int = 200
    summary: str = ""
    body_optional: bool = False
    # Query parameters, for the OpenAPI document: (name, required).
    query: tuple[tuple[str, bool], ...] = ()
    # A body the handler streams itself (no request_model): its media types, for the document.
    raw_body: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Call:
    """What `guarded` established before the handler runs."""

    principal: Principal
    model: Model | None = None
    body: Any = None
    permission: Permission = Permission.none
    grant_expires_at: datetime | None = None


ROUTE_TABLE = web.AppKey("route_table", list)
_CALL = "greenroom.call"
# Set before a route's locator runs, so it can fetch the caller's access with what it locates.
CALLER = web.RequestKey("caller", Principal)
# A locator that read the model and the caller's grant with its own row leaves them here.
LOCATED_ACCESS = web.RequestKey("located_access", tuple)


def require_secret(settings: Settings) -> str:
    """The signing secret; the API refuses to start without one."""
    if settings.secret_key is None or not settings.secret_key.get_secret_value():
        raise RuntimeError("GREENROOM_SECRET_KEY is not set: the API needs it to sign and "
                           "verify tokens and to encrypt deployment secrets")
    return settings.secret_key.get_secret_value()


def hash_api_key(key: str) -> str:
    """Keys are long random strings, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(key.encode()).hexdigest()


# ---- authentication ----

def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    return token.strip()


async def _from_api_key(pool: asyncpg.Pool, key: str) -> Principal:
    user = await api_keys.user_for_key(pool, hash_api_key(key))
    if user is None:
        raise Unauthorized("API key is unknown, revoked or expired")
    return Principal(kind="user", user_id=user.id, username=user.username,
                     is_admin=user.is_admin, via="api_key")


async def _from_claims(pool: asyncpg.Pool, claims: Claims) -> Principal:
    if claims.typ == "user":
        user = await users.get(pool, int(claims.sub))
        if user is None:
            raise Unauthorized("the token's user no longer exists")
        return Principal(kind="user", user_id=user.id, username=user.username,
                         is_admin=user.is_admin, expires_at=claims.exp, via="jwt")
    model_id = UUID(claims.sub)
    if claims.typ == "job":
        assert claims.gen is not None
        if not await deployments.generation_is_live(pool, model_id, claims.gen):
            raise Unauthorized("job token of a stopped generation")
    return Principal(kind=claims.typ, model_id=model_id, generation=claims.gen,
                     expires_at=claims.exp, via="jwt")


async def authenticate(request: web.Request) -> Principal:
    """The caller named by the bearer token; ANONYMOUS without one; 401 for a bad one.
    A user's token is looked up at most once a second (service/auth/principal_cache.py)."""
    token = _bearer(request)
    if token is None:
        return ANONYMOUS
    cache = request.app.get(PRINCIPALS)
    if cache is not None and (known := cache.get(token)) is not None:
        return known
    principal = await _resolve_token(request, token)
    if cache is not None:
        cache.put(token, principal)
    return principal


async def _resolve_token(request: web.Request, token: str) -> Principal:
    pool = request.app[PG]
    if token.startswith(API_KEY_PREFIX):
        return await _from_api_key(pool, token)
    try:
        claims = decode(require_secret(request.app[SETTINGS]), token)
    except InvalidToken:
        raise Unauthorized("bearer token is invalid or expired") from None
    if claims.typ == "job" and claims.gen is None:
        raise Unauthorized("job token without a generation")
    try:
        return await _from_claims(pool, claims)
    except ValueError:
        raise Unauthorized("bearer token is invalid") from None


# ---- permissions ----

def resolve(principal: Principal, model: Model, grant: Grant | None,
            now: datetime | None = None) -> tuple[Permission, datetime | None]:
    """The principal's permission on the model and, if it comes from a grant, its expiry."""
    if principal.kind == "job":
        return (Permission.read if principal.model_id == model.id else Permission.none), None
    if principal.kind != "user":
        public = principal.kind == "anonymous" and model.access_level == "public"
        return (Permission.read if public else Permission.none), None
    if principal.is_admin or principal.user_id == model.owner_id:
        return Permission.owner, None
    now = now or datetime.now(UTC)
    granted = Permission.none
    if grant is not None and (grant.expires_at is None or grant.expires_at > now):
        granted = Permission.parse(grant.permission)
    default = Permission.none
    if model.access_level in ("public", "protected"):
        default = Permission.parse(model.default_permission)
    if granted >= default and granted > Permission.none:
        return granted, grant.expires_at if grant else None
    return default, None


async def permission_on(pool: asyncpg.Pool, principal: Principal,
                        model: Model) -> tuple[Permission, datetime | None]:
    grant = None
    owner_or_admin = principal.is_admin or principal.user_id == model.owner_id
    if principal.kind == "user" and principal.user_id is not None and not owner_or_admin:
        grant = await permissions.get(pool, model.id, principal.user_id)
    return resolve(principal, model, grant)


# ---- locating the model a request names ----

def path_param(name: str) -> Locator:
    async def locate(request: web.Request, body: Any) -> str:
        return request.match_info[name]
    return locate


def query_param(name: str) -> Locator:
    async def locate(request: web.Request, body: Any) -> str:
        value = request.query.get(name)
        if not value:
            raise Invalid(f"invalid request: query parameter {name} is required",
                          [{"loc": ["query", name], "msg": "Field required",
                            "type": "missing"}])
        return value
    return locate


def body_field(name: str) -> Locator:
    async def locate(request: web.Request, body: Any) -> str:
        return str(getattr(body, name))
    return locate


async def find_model(pool: asyncpg.Pool, ref: str) -> Model:
    model = await models.find(pool, ref)
    if model is None:
        raise NotFound(f"model {ref!r} not found", {"model": ref})
    return model


# ---- the guard ----

def call_of(request: web.Request) -> Call:
    call: Call = request[_CALL]
    return call


def _check_signed_in(principal: Principal, auth: Auth) -> None:
    if principal.kind == "anonymous":
        raise Unauthorized()
    if auth in ("user", "admin") and not principal.is_user:
        raise Forbidden("this route needs a user's token or API key")
    if auth == "admin" and not principal.is_admin:
        raise Forbidden("this route is for administrators")
    if auth in ("job", "job_model") and principal.kind != "job":
        raise Forbidden("this route needs a deployment job token")
    if auth == "update" and principal.kind != "update":
        raise Forbidden("this route needs an update token")


async def _principal(request: web.Request, auth: Auth) -> Principal:
    if auth == "public":
        return ANONYMOUS
    if auth == "optional":
        try:
            return await authenticate(request)
        except Unauthorized:
            return ANONYMOUS
    principal = await authenticate(request)
    if auth != "inference":
        _check_signed_in(principal, auth)
    return principal


async def _token_model(pool: asyncpg.Pool, principal: Principal) -> Model:
    assert principal.model_id is not None
    model = await models.get(pool, principal.model_id)
    if model is None:
        raise Unauthorized("the token's model no longer exists")
    return model


async def _model_call(request: web.Request, spec: RouteSpec, principal: Principal,
                      body: Any) -> Call:
    pool = request.app[PG]
    if spec.auth in ("job", "update"):
        model = await _token_model(pool, principal)
        return Call(principal, model, body, Permission.read)
    assert spec.locate is not None, f"{spec.method} {spec.path} names no model"
    request[CALLER] = principal
    ref = await spec.locate(request, body)
    located: tuple[Model, Grant | None] | None = request.get(LOCATED_ACCESS)
    model = located[0] if located is not None else await find_model(pool, ref)
    if spec.auth == "job_model":
        if principal.model_id != model.id:
            raise Forbidden("this job token belongs to another model")
        return Call(principal, model, body, Permission.read)
    if located is not None:
        level, expires = resolve(principal, model, located[1])
    else:
        level, expires = await permission_on(pool, principal, model)
    needed = MODEL_LEVELS.get(spec.auth, Permission.none)
    if level < needed:
        raise Forbidden(f"{needed.name} permission on {model.identifier} is required")
    return Call(principal, model, body, level, expires)


async def _inference_call(request: web.Request, spec: RouteSpec, principal: Principal,
                          body: Any) -> Call:
    """Public models need no token; others need read access (checked only if serving)."""
    assert spec.locate is not None
    route = request.app[GATEWAY].lookup(await spec.locate(request, body))
    if route is None or route.access_level == "public":
        return Call(principal, None, body)  # the gateway answers 404 for a missing route
    if principal.kind == "anonymous":
        raise Unauthorized()
    model = await models.get(request.app[PG], route.model_id)
    if model is None:
        raise NotFound("model not found")
    level, _ = await permission_on(request.app[PG], principal, model)
    if level < Permission.read:
        raise Forbidden(f"read permission on {model.identifier} is required")
    return Call(principal, model, body, level)


async def _body(request: web.Request, spec: RouteSpec) -> Any:
    if spec.request_model is None:
        return None
    if spec.body_optional and not (await request.read()).strip():
        return spec.request_model()
    return await parse_body(request, spec.request_model)


async def _establish(request: web.Request, spec: RouteSpec) -> Call:
    principal = await _principal(request, spec.auth)
    body = await _body(request, spec)
    if spec.auth == "inference":
        return await _inference_call(request, spec, principal, body)
    if spec.locate is None and spec.auth not in ("job", "update"):
        return Call(principal, None, body)
    return await _model_call(request, spec, principal, body)


def guarded(spec: RouteSpec) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        request[_CALL] = await _establish(request, spec)
        return await spec.handler(request)

    handler.__doc__ = spec.handler.__doc__
    handler.__name__ = spec.handler.__name__
    return handler


def register(app: web.Application, specs: list[RouteSpec]) -> None:
    """Add the routes, each behind its guard, and record them in the app's route table."""
    if ROUTE_TABLE not in app:
        app[ROUTE_TABLE] = []
    for spec in specs:
        app.router.add_route(spec.method, spec.path, guarded(spec))
        app[ROUTE_TABLE].append(spec)
