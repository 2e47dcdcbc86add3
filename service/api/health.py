"""Liveness, readiness and metrics of the API process."""

import asyncio
import contextlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from edge.auth.rules import PUBLIC
from edge.keys import PG
from edge.metrics import exposition
from edge.openapi import openapi_json
from edge.route_spec import RouteSpec
from edge.routes import register
from schemas.queue import WORKER_KEY_PREFIX
from service.keys import METRICS, REDIS

PROBE_TIMEOUT_S = 1.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _probe_pg(request: web.Request) -> bool:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            return bool(await request.app[PG].fetchval("SELECT 1") == 1)
    return False


async def _probe_redis(request: web.Request) -> tuple[bool, int]:
    redis = request.app[REDIS]
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await redis.ping()
            workers = [k async for k in redis.scan_iter(match=WORKER_KEY_PREFIX + "*")]
            return True, len(workers)
    return False, 0


async def readyz(request: web.Request) -> web.Response:
    """200 when Postgres and Redis answer (else 503); counts the live workers."""
    pg_ok = await _probe_pg(request)
    redis_ok, workers = await _probe_redis(request)
    ok = pg_ok and redis_ok
    body = {"status": "ok" if ok else "unavailable", "postgres": pg_ok, "redis": redis_ok,
            "workers": workers}
    if not ok:
        body |= {"status_code": 503, "message": "a dependency is unavailable"}
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: the API's requests (service/metrics.py); inference is counted
    on each gateway's /metrics."""
    body = exposition(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    RouteSpec("GET", "/healthz", healthz, PUBLIC, summary="Liveness"),
    RouteSpec("GET", "/readyz", readyz, PUBLIC, summary="Readiness"),
    RouteSpec("GET", "/metrics", metrics, PUBLIC, summary="Metrics"),
    RouteSpec("GET", "/openapi.json", openapi_json, PUBLIC, summary="OpenAPI document"),
]


def setup(app: web.Application) -> None:
    register(app, ROUTES)
