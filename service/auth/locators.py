"""Finding the model a request names: from a path parameter, a query parameter or a field
of the parsed body, then by id or `owner/name` in the registry (404 if none)."""

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from db import models
from db.models import Model
from schemas.auth import Principal
from schemas.errors import Invalid, NotFound

Locator = Callable[[web.Request, Any], Awaitable[str]]
# Set before a route's locator runs, so it can fetch the caller's access with what it locates.
CALLER = web.RequestKey("caller", Principal)
# A locator that read the model and the caller's grant with its own row leaves them here.
LOCATED_ACCESS = web.RequestKey("located_access", tuple)


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
