"""Quotas under /api/v2/users: the caller's use against its limits, an admin's overrides."""

from aiohttp import web

from edge.auth.rules import ADMIN, USER
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.responses import json_response
from edge.route_spec import RouteSpec
from schemas.quotas import QuotaLimits, UsageResponse
from service.domain import quotas


async def my_usage(request: web.Request) -> web.Response:
    """What the caller's models hold (models, serving deployments, live replicas, their
    memory) against the caller's limits."""
    user_id = call_of(request).principal.user_id
    assert user_id is not None
    return json_response(await quotas.usage(request.app[PG], request.app[SETTINGS], user_id))


async def user_usage(request: web.Request) -> web.Response:
    """A user's use against limits (administrators only)."""
    pool, settings = request.app[PG], request.app[SETTINGS]
    user_id = await quotas.user_id_of(pool, request.match_info["username"])
    return json_response(await quotas.usage(pool, settings, user_id))


async def set_quotas(request: web.Request) -> web.Response:
    """Override a user's limits (administrators only); null or omitted: the default."""
    body: QuotaLimits = call_of(request).body
    return json_response(await quotas.set_limits(
        request.app[PG], request.app[SETTINGS], request.match_info["username"], body))


ROUTES = [
    RouteSpec("GET", "/api/v2/users/me/usage", my_usage, USER, None, UsageResponse,
              summary="The caller's use against its quotas"),
    RouteSpec("GET", "/api/v2/users/{username}/usage", user_usage, ADMIN, None,
              UsageResponse, summary="A user's use against its quotas"),
    RouteSpec("PUT", "/api/v2/users/{username}/quotas", set_quotas, ADMIN, QuotaLimits,
              UsageResponse, summary="Override a user's quotas"),
]
