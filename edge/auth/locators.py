"""Finding the model a request names: from a path parameter, a query parameter or a field
of the parsed body, then by id or `owner/name` in the registry (404 if none).

A model the caller may not read answers as a missing one (review L1): the guard raises the
error `missing` gives for what the request named, so the two answers are the same bytes."""

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
# A locator that finds the model through something else (a task) leaves here the error it
# answers when that thing is missing; the guard answers it for a model the caller cannot read.
MISSING = web.RequestKey("missing", NotFound)


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


def model_not_found(ref: str) -> NotFound:
    """The answer for a model reference that names nothing the caller may read."""
    return NotFound(f"model {ref!r} not found", {"model": ref})


def deployment_not_found(key: str) -> NotFound:
    """The gateway's answer for a deployment name that serves nothing the caller may read."""
    return NotFound(f"deployment {key!r} not found or not serving")


def missing(request: web.Request, ref: str) -> NotFound:
    """What the request answers when what it names is not there (or not for this caller)."""
    return request.get(MISSING) or model_not_found(ref)


async def find_model(pool: asyncpg.Pool, ref: str) -> Model:
    model = await models.find(pool, ref)
    if model is None:
        raise model_not_found(ref)
    return model
