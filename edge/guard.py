"""The guard in front of every registered handler: it establishes the `Call`.

In order: who is calling (the route's `Access.caller`; 401, then 403 for the wrong kind
of caller), the body (400/422), the model the route acts on (`Access.model`; 404) and
the caller's permission on it (`Access.permission`; 403). A model the caller may not even
read answers exactly as a missing one (404), so no answer tells a private model exists;
too little permission on a model the caller reads is 403. The handler reads the outcome
with `call_of(request)`.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from db import models
from db.models import Model
from db.permissions import Grant
from edge.auth.authentication import authenticate
from edge.auth.locators import (
    CALLER,
    LOCATED_ACCESS,
    deployment_not_found,
    find_model,
    missing,
)
from edge.auth.permissions import knows_of, permission_on, resolve
from edge.auth.rules import Caller, ModelFrom
from edge.keys import PG, SERVING_ROUTES
from edge.parsing import parse_body, refuse_nul_in_url
from edge.route_spec import RouteSpec
from schemas.auth import ANONYMOUS, Permission, Principal
from schemas.errors import Forbidden, Unauthorized

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Call:
    """What the guard established before the handler runs."""

    principal: Principal
    model: Model | None = None
    body: Any = None
    permission: Permission = Permission.none
    grant_expires_at: datetime | None = None


_CALL = "greenroom.call"


def call_of(request: web.Request) -> Call:
    call: Call = request[_CALL]
    return call


def _check_caller(principal: Principal, caller: Caller) -> None:
    if caller is Caller.token_if_any:
        return
    if principal.kind == "anonymous":
        raise Unauthorized()
    if caller in (Caller.user, Caller.admin) and not principal.is_user:
        raise Forbidden("this route needs a user's token or API key")
    if caller is Caller.admin and not principal.is_admin:
        raise Forbidden("this route is for administrators")
    if caller is Caller.job and principal.kind != "job":
        raise Forbidden("this route needs a deployment job token")
    if caller is Caller.update and principal.kind != "update":
        raise Forbidden("this route needs an update token")


async def _principal(request: web.Request, caller: Caller) -> Principal:
    if caller is Caller.anyone:
        return ANONYMOUS
    if caller is Caller.lenient:
        try:
            return await authenticate(request)
        except Unauthorized:
            return ANONYMOUS
    principal = await authenticate(request)
    _check_caller(principal, caller)
    return principal


async def _token_call(request: web.Request, principal: Principal, body: Any) -> Call:
    assert principal.model_id is not None
    model = await models.get(request.app[PG], principal.model_id)
    if model is None:
        raise Unauthorized("the token's model no longer exists")
    return Call(principal, model, body, Permission.read)


async def _located_call(request: web.Request, spec: RouteSpec, principal: Principal,
                        body: Any) -> Call:
    pool = request.app[PG]
    assert spec.locate is not None, f"{spec.method} {spec.path} names no model"
    request[CALLER] = principal
    ref = await spec.locate(request, body)
    located: tuple[Model, Grant | None] | None = request.get(LOCATED_ACCESS)
    model = located[0] if located is not None else await find_model(pool, ref)
    if spec.access.caller is Caller.job:
        if principal.model_id != model.id:
            raise missing(request, ref)
        return Call(principal, model, body, Permission.read)
    if located is not None:
        level, expires = resolve(principal, model, located[1])
    else:
        level, expires = await permission_on(pool, principal, model)
    if not knows_of(principal, model, level):
        raise missing(request, ref)
    needed = spec.access.permission
    if level < needed:
        raise Forbidden(f"{needed.name} permission on {model.identifier} is required")
    return Call(principal, model, body, level, expires)


async def _serving_call(request: web.Request, spec: RouteSpec, principal: Principal,
                        body: Any) -> Call:
    """Public models need no token; others need the permission (checked only if serving).
    A caller who may not read the deployment's model is answered as for a missing one."""
    assert spec.locate is not None
    key = await spec.locate(request, body)
    route = request.app[SERVING_ROUTES].lookup(key)
    if route is None or route.access_level == "public":
        return Call(principal, None, body)  # the gateway answers 404 for a missing route
    model = await models.get(request.app[PG], route.model_id)
    if model is None:
        raise deployment_not_found(key)
    level, _ = await permission_on(request.app[PG], principal, model)
    if not knows_of(principal, model, level):
        raise deployment_not_found(key)
    if level < spec.access.permission:
        raise Forbidden(f"{spec.access.permission.name} permission on {model.identifier} "
                        "is required")
    return Call(principal, model, body, level)


async def _body(request: web.Request, spec: RouteSpec) -> Any:
    if spec.request_model is None:
        return None
    if spec.body_optional and not (await request.read()).strip():
        return spec.request_model()
    return await parse_body(request, spec.request_model)


async def _establish(request: web.Request, spec: RouteSpec) -> Call:
    refuse_nul_in_url(request)
    principal = await _principal(request, spec.access.caller)
    body = await _body(request, spec)
    match spec.access.model:
        case ModelFrom.nowhere:
            return Call(principal, None, body)
        case ModelFrom.token:
            return await _token_call(request, principal, body)
        case ModelFrom.request:
            return await _located_call(request, spec, principal, body)
        case ModelFrom.serving:
            return await _serving_call(request, spec, principal, body)


def guarded(spec: RouteSpec) -> Handler:
    """The spec's handler behind the guard."""
    async def handler(request: web.Request) -> web.StreamResponse:
        request[_CALL] = await _establish(request, spec)
        return await spec.handler(request)

    handler.__doc__ = spec.handler.__doc__
    handler.__name__ = spec.handler.__name__
    return handler
