"""The route table: every route of every surface is a `RouteSpec`, added by `register`.

A spec says what a route takes, what it answers and who may call it (an `Access` from
service/auth/rules.py). `register` adds each handler behind the guard
(service/auth/guard.py) and records the spec in the app's `ROUTE_TABLE`, which the
OpenAPI document (service/web/openapi.py) and the authorisation-matrix test read.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from service.auth.guard import guarded
from service.auth.locators import Locator
from service.auth.rules import Access

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route of a surface: what it takes, what it answers and who may call it."""

    method: str
    path: str
    handler: Handler
    access: Access
    request_model: type[BaseModel] | None = None
    response_model: Any = None
    locate: Locator | None = None
    status: int = 200
    summary: str = ""
    body_optional: bool = False
    # Query parameters, for the OpenAPI document: (name, required), or (name, required,
    # JSON schema) where the handler takes less than any string (a default: a string, and
    # a required one not empty).
    query: tuple[tuple[str, bool] | tuple[str, bool, dict[str, Any]], ...] = ()
    # A body the handler streams itself (no request_model): its media types, for the document.
    raw_body: tuple[str, ...] = ()
    # Another success status with the same answer: an idempotent replay's (the task made
    # before), for the document.
    replay_status: int | None = None
    # The media type of the success answer, for the document.
    response_media: str = "application/json"


ROUTE_TABLE = web.AppKey("route_table", list)


def register(app: web.Application, specs: list[RouteSpec]) -> None:
    """Add the routes, each behind its guard, and record them in the app's route table."""
    if ROUTE_TABLE not in app:
        app[ROUTE_TABLE] = []
    for spec in specs:
        app.router.add_route(spec.method, spec.path, guarded(spec))
        app[ROUTE_TABLE].append(spec)
