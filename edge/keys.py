"""Typed application keys both HTTP processes hold: what the shared edge code reads.

Each process keeps its own keys beside these (service/keys.py, gateway/keys.py).
"""

from typing import Protocol

import asyncpg
from aiohttp import web

from db.deployments import Route
from schemas.settings import Settings


class ServingRoutes(Protocol):
    """The routes of the deployments being served, by name (the gateway's routing table)."""

    def lookup(self, key: str) -> Route | None: ...


SETTINGS = web.AppKey("settings", Settings)
PG = web.AppKey("pg", asyncpg.Pool)
# Read by the guard for a route whose model is the serving deployment's (`ModelFrom.serving`).
SERVING_ROUTES = web.AppKey("serving_routes", ServingRoutes)
