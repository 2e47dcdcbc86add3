"""The aiohttp application factory: resources in cleanup contexts, routes per surface."""

from collections.abc import AsyncIterator

from aiohttp import web
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from db.pool import create_pool as create_pg_pool
from schemas.queue import QUEUE_NAME
from schemas.settings import Settings
from service import (
    routes_docs,
    routes_health,
    routes_quotas,
    routes_registry,
    routes_scale,
    routes_tasks,
    routes_v1,
    routes_v2_deploy,
)
from service.auth import register, require_secret
from service.console import setup as setup_console
from service.errors import error_middleware
from service.keys import LOGIN_THROTTLE, METRICS, PG, REDIS, SETTINGS
from service.login_throttle import LoginThrottle
from service.metrics import ApiMetrics
from service.principal_cache import principal_cache_ctx


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    app[PG] = await create_pg_pool(app[SETTINGS].require_database_url(), max_size=20)
    yield
    await app[PG].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    # Connect lazily (no start-up ping): the API accepts tasks while Redis is down.
    connections = ConnectionPool.from_url(app[SETTINGS].require_redis_url(),
                                          socket_connect_timeout=1, socket_timeout=5)
    app[REDIS] = ArqRedis(connections, default_queue_name=QUEUE_NAME)
    yield
    await app[REDIS].aclose()


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    require_secret(settings)  # fail at start, not at the first login
    metrics = ApiMetrics()
    app = web.Application(middlewares=[metrics.middleware(), error_middleware],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[LOGIN_THROTTLE] = LoginThrottle(settings.login_max_failures_per_user,
                                        settings.login_max_failures_per_address,
                                        settings.login_window_s)
    # Inference is the gateway's (service/gateway_app.py), a process of its own.
    app.cleanup_ctx.extend([_postgres, _redis,
                            principal_cache_ctx(REDIS, settings.access_cache_ttl_s)])
    app[METRICS] = metrics
    routes_tasks.setup(app)
    routes_health.setup(app)
    routes_docs.setup(app)
    # routes_scale before routes_v2_deploy: POST {model}/scale is not a deploy of a model
    # named `<model>/scale`.
    for surface in (routes_registry, routes_quotas, routes_scale, routes_v2_deploy, routes_v1):
        register(app, surface.ROUTES)
    setup_console(app)
    return app
