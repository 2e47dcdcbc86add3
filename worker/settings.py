"""arq WorkerSettings: start-up and shutdown of a worker's shared resources."""

import asyncio
import contextlib
import os
import socket
from typing import Any
from uuid import uuid4

import aiohttp
import structlog
from aiohttp import web
from arq import func
from arq.connections import RedisSettings
from arq.worker import Worker
from redis.exceptions import RedisError

from db.pool import create_pool
from schemas.logs import configure_logging
from schemas.queue import (
    JOB_REPLICA_LOGS,
    JOB_RUN_TASK,
    LOGS_RESULT_KEEP_S,
    QUEUE_NAME,
    decode_job,
    encode_job,
)
from schemas.settings import Settings
from schemas.tokens import weak_secret_reason
from worker import installation, metrics, reconciler, series
from worker.context import CONTEXT_KEY, WorkerContext
from worker.jobs import arq_job, replica_logs, run_task, task_job_timeout_s
from worker.runtimes import create_runtime
from worker.runtimes.process import ProcessRuntime
from worker.scaling import autoscaler

log = structlog.get_logger(__name__)
REDIS_RETRY_S = 1.0
# arq polls its queue (it has no blocking pop); its default 0.5 s was, on average, the
# largest wait between POST /deploy and a new generation serving (bench/rollout.py).
QUEUE_POLL_S = 0.1


def refuse_weak_secret(settings: Settings) -> None:
    """A worker signs job tokens and decrypts deployment secrets: never with a weak key."""
    if settings.secret_key is not None and (
            reason := weak_secret_reason(settings.secret_key.get_secret_value())) is not None:
        raise RuntimeError(reason)


async def startup(arq_ctx: dict[str, Any]) -> None:
    settings: Settings = arq_ctx.get("settings") or Settings()
    refuse_weak_secret(settings)
    pool = await create_pool(settings.require_database_url(),
                                max_size=settings.worker_max_jobs + 4)
    settings = await installation.resolve(settings, pool)
    ctx = WorkerContext(
        settings=settings, pool=pool, redis=arq_ctx["redis"], runtime=create_runtime(settings),
        http=aiohttp.ClientSession(), worker_id=f"{socket.gethostname()}:{os.getpid()}:"
        f"{uuid4().hex[:6]}",
    )
    arq_ctx[CONTEXT_KEY] = ctx
    if isinstance(ctx.runtime, ProcessRuntime):
        ctx.runtime.warm()  # its zygote, in the background: the first deploy is forked too
    if settings.worker_metrics_port is not None:
        arq_ctx["metrics_server"] = await metrics.serve(ctx.metrics,
                                                        settings.worker_metrics_host,
                                                    settings.worker_metrics_port)
    arq_ctx["reconciler"] = asyncio.create_task(reconciler.run_forever(ctx))
    arq_ctx["autoscaler"] = asyncio.create_task(autoscaler.run_forever(ctx, run_task))
    arq_ctx["series"] = asyncio.create_task(series.run_forever(ctx))
    log.info("worker_started", worker=ctx.worker_id, runtime=ctx.runtime.name,
             cluster=settings.cluster)


async def shutdown(arq_ctx: dict[str, Any]) -> None:
    ctx: WorkerContext | None = arq_ctx.get(CONTEXT_KEY)
    for name in ("series", "autoscaler", "reconciler"):
        task: asyncio.Task[None] | None = arq_ctx.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    server: web.AppRunner | None = arq_ctx.get("metrics_server")
    if server is not None:
        await server.cleanup()
    if ctx is not None:
        await ctx.http.close()
        await ctx.runtime.close()
        await ctx.pool.close()
        log.info("worker_stopped", worker=ctx.worker_id)


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for arq.Worker built from Greenroom settings."""
    job_timeout = task_job_timeout_s(settings)
    return {
        "functions": [
            func(arq_job(run_task), name=JOB_RUN_TASK, max_tries=100_000, timeout=job_timeout),
            func(arq_job(replica_logs), name=JOB_REPLICA_LOGS, max_tries=1, timeout=10,
                 keep_result=LOGS_RESULT_KEEP_S),
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.require_redis_url()),
        "queue_name": QUEUE_NAME,
        # JSON, not pickle: a job written to Redis is data, never code (schemas/queue.py).
        "job_serializer": encode_job,
        "job_deserializer": decode_job,
        "poll_delay": QUEUE_POLL_S,
        "max_jobs": settings.worker_max_jobs,
        "keep_result": 0,
        "handle_signals": True,
        # SIGTERM: stop taking jobs, give running ones this long, then cancel (hand back).
        "job_completion_wait": int(settings.shutdown_grace_s),
        "ctx": {"settings": settings},
    }


class ResilientWorker(Worker):
    """arq's worker, but a Redis outage pauses polling instead of ending the process."""

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable_polling_paused", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(REDIS_RETRY_S)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    refuse_weak_secret(settings)
    ResilientWorker(**worker_settings(settings)).run()
