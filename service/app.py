"""The aiohttp application factory: resources in cleanup contexts, routes per surface."""

from collections.abc import AsyncIterator

from aiohttp import web
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from db.pool import create_pool
from edge.auth.authentication import require_secret
from edge.auth.principal_cache import principal_cache_ctx
from edge.errors import error_middleware
from edge.keys import PG, SETTINGS
from edge.routes import register
from schemas.file_modes import private_dir
from schemas.queue import QUEUE_NAME, decode_job, encode_job
from schemas.settings import Settings
from service import console
from service.api import (
    bazaar_v1,
    bazaar_v2,
    docs,
    embed_jobs,
    health,
    quotas,
    registry,
    revisions,
    scale,
    series,
    tasks,
)
from service.domain import upload_lease
from service.domain.login_throttle import LoginThrottle
from service.domain.passwords import Passwords
from service.keys import LOGIN_THROTTLE, METRICS, PASSWORDS, REDIS
from service.metrics import ApiMetrics


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    app[PG] = await create_pool(app[SETTINGS].require_database_url(), max_size=20)
    yield
    await app[PG].close()


async def _upload_scratch(app: web.Application) -> AsyncIterator[None]:
    """Scratch folders of uploads an API killed mid-upload left behind (review M5)."""
    settings = app[SETTINGS]
    store = private_dir(settings.model_store_dir.resolve())  # its owner's alone (review L4)
    await upload_lease.sweep_incoming(app[PG], store, settings.upload_lease_s)
    yield


async def _redis(app: web.Application) -> AsyncIterator[None]:
    # Connect lazily (no start-up ping): the API accepts tasks while Redis is down.
    connections = ConnectionPool.from_url(app[SETTINGS].require_redis_url(),
                                          socket_connect_timeout=1, socket_timeout=5)
    app[REDIS] = ArqRedis(connections, default_queue_name=QUEUE_NAME,
                          job_serializer=encode_job, job_deserializer=decode_job)
    yield
    await app[REDIS].aclose()


async def _close_passwords(app: web.Application) -> None:
    app[PASSWORDS].close()


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    require_secret(settings)  # fail at start, not at the first login
    metrics = ApiMetrics()
    app = web.Application(middlewares=[metrics.middleware(), error_middleware()],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[LOGIN_THROTTLE] = LoginThrottle(
        free_failures=settings.login_free_failures, wait_base_s=settings.login_wait_base_s,
        wait_max_s=settings.login_wait_max_s,
        max_per_address=settings.login_max_failures_per_address,
        window_s=settings.login_window_s)
    app[PASSWORDS] = Passwords(settings.login_hash_threads, settings.login_hash_queue)
    app.on_cleanup.append(_close_passwords)
    # Inference is the gateway's (gateway/app.py), a process of its own.
    app.cleanup_ctx.extend([_postgres, _upload_scratch, _redis,
                            principal_cache_ctx(REDIS, settings.access_cache_ttl_s)])
    app[METRICS] = metrics
    tasks.setup(app)
    health.setup(app)
    docs.setup(app)
    # scale before bazaar_v2: POST {model}/scale is not a deploy of a model
    # named `<model>/scale`.
    # revisions before registry and bazaar_v2: GET {model}/revisions is not a model named
    # `<model>/revisions`, POST {model}/rollback not a deploy of one.
    for surface in (revisions, registry, quotas, embed_jobs, scale, series, bazaar_v2,
                    bazaar_v1):
        register(app, surface.ROUTES)
    console.setup(app)
    return app
