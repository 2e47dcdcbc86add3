"""The route table: every route of every surface is a `RouteSpec` (edge/route_spec.py),
added by `register`.

`register` adds each handler behind the guard (edge/guard.py) and records the spec in the
app's `ROUTE_TABLE`, which the OpenAPI document (edge/openapi.py) and the
authorisation-matrix test read.
"""

from aiohttp import web

from edge.guard import guarded
from edge.route_spec import RouteSpec

ROUTE_TABLE = web.AppKey("route_table", list)


def register(app: web.Application, specs: list[RouteSpec]) -> None:
    """Add the routes, each behind its guard, and record them in the app's route table."""
    if ROUTE_TABLE not in app:
        app[ROUTE_TABLE] = []
    for spec in specs:
        app.router.add_route(spec.method, spec.path, guarded(spec))
        app[ROUTE_TABLE].append(spec)
