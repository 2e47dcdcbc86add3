"""Retention in every worker's reconciler (review M14): the tables callers can grow are
pruned every `retention_interval_s` (db/retention.py), and process replicas' logs are capped
at each pass."""

import asyncio
import shutil
from pathlib import Path

import structlog

from db import retention, revisions, series
from db.revisions import Revision
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
    pruned["revision_files"] = await prune_revision_files(ctx)
    if any(pruned.values()):
        log.info("retention_pruned", **pruned)
    return pruned


def _revision_folder(store: Path, revision: Revision) -> Path | None:
    """The revision's own folder in the store, `<store>/<model>/<number>`; None for any
    other location (never removed from here)."""
    folder = store / str(revision.model_id) / str(revision.number)
    location = revision.source.get("location")
    return folder if isinstance(location, str) and Path(location) == folder else None


async def prune_revision_files(ctx: WorkerContext) -> int:
    """Remove uploaded revisions' files once no live generation, no warm one and no rollback
    target pins them, nor is the revision its model's newest (db/revisions.py
    `unused_uploads`); the row stays, saying when its files went."""
    store = ctx.settings.model_store_dir.resolve()
    removed = 0
    for revision in await revisions.unused_uploads(ctx.pool):
        folder = _revision_folder(store, revision)
        if folder is not None:
            await asyncio.to_thread(shutil.rmtree, folder, True)
        await revisions.mark_files_removed(ctx.pool, revision.model_id, revision.number)
        removed += 1
    return removed


async def cap_replica_logs(ctx: WorkerContext) -> int:
    """Cut this worker's process replicas' logs past `replica_log_max_mb`; files cut."""
    if not isinstance(ctx.runtime, ProcessRuntime):
        return 0  # Docker and Swarm keep container logs under the engine's own log settings
    return await asyncio.to_thread(ctx.runtime.cap_logs,
                                   int(ctx.settings.replica_log_max_mb * 2**20))
