"""Retention in every worker's reconciler (review M14): the tables callers can grow are
pruned every `retention_interval_s` (db/retention.py), and process replicas' logs are capped
at each pass."""

import asyncio

import structlog

from db import retention, series
from worker import embed_job
from worker.context import WorkerContext
from worker.runtimes.process import ProcessRuntime

log = structlog.get_logger(__name__)
DAY_S = 86_400.0


async def prune(ctx: WorkerContext) -> dict[str, int]:
    """One pruning pass over tasks, events, feedback and expired embed jobs (their files
    too); the rows each lost."""
    settings = ctx.settings
    pruned = {
        "tasks": await retention.prune_tasks(ctx.pool, settings.task_retention_days * DAY_S),
        "events": await retention.prune_events(ctx.pool, settings.event_retention_days * DAY_S,
                                               settings.events_per_model),
        "feedback": await retention.prune_feedback(ctx.pool, settings.feedback_per_model),
        "series": await series.prune(ctx.pool, settings.series_retention_h * 3600.0),
        "embed_jobs": await embed_job.prune(ctx),
    }
    if any(pruned.values()):
        log.info("retention_pruned", **pruned)
    return pruned


async def cap_replica_logs(ctx: WorkerContext) -> int:
    """Cut this worker's process replicas' logs past `replica_log_max_mb`; files cut."""
    if not isinstance(ctx.runtime, ProcessRuntime):
        return 0  # Docker and Swarm keep container logs under the engine's own log settings
    return await asyncio.to_thread(ctx.runtime.cap_logs,
                                   int(ctx.settings.replica_log_max_mb * 2**20))
