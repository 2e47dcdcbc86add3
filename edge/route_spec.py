"""A route of a surface, as a `RouteSpec`: what it takes, what it answers, who may call it.

A spec names an `Access` (edge/auth/rules.py); `register` (edge/routes.py) adds its handler
behind the guard (edge/guard.py) and records it in the app's route table, which the OpenAPI
document (edge/openapi.py) and the authorisation-matrix test read. The spec is data only,
so the guard reads it without importing the table that imports the guard.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from edge.auth.locators import Locator
from edge.auth.rules import Access

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
    # Other media types the success answer may have (a query parameter chooses), each a
    # binary string in the document.
    response_alternatives: tuple[str, ...] = ()
