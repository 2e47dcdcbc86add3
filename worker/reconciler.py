"""The reconciler loop: Postgres is the truth, Redis and runtimes follow it.

Each pass releases tasks whose worker died (removing what they half made), replaces
crashed serving replicas (worker/repair.py), removes replicas nothing owns, records as
stopped the rows of replicas that no longer run, writes this worker's heartbeat and
enqueues pending tasks Redis may have lost.

Every step is safe with many reconcilers running at once: each write is conditional.
"""

import asyncio
import time
from uuid import UUID

import structlog
from redis.exceptions import RedisError

from db import deployments, events, replicas, tasks
from db.errors import DatabaseError
from db.replicas import ReplicaBrief
from schemas.queue import (
    JOB_RUN_TASK,
    QUEUE_NAME,
    WORKER_KEY_PREFIX,
    WORKER_TTL_S,
    WorkerHeartbeat,
    retry_job_id,
)
from schemas.tasks import Phase, ReplicaState
from worker import replica_lifecycle, retention, traffic_phase, warm
from worker.context import WorkerContext
from worker.repair import replace_crashed
from worker.runtimes.base import ReplicaInfo, manages

log = structlog.get_logger(__name__)
# A pending task enqueued this long ago is offered to Redis again (a no-op if it is there).
REENQUEUE_AFTER_S = 10.0
# A live row outside the serving set whose replica does not run is recorded as stopped once
# it has not changed for this long (see forget_vanished).
VANISHED_AFTER_S = 10.0


async def enqueue_pending(ctx: WorkerContext) -> int:
    """Enqueue pending tasks that never reached Redis or may have been lost from it."""
    count = 0
    for task in await tasks.list_unenqueued(ctx.pool, REENQUEUE_AFTER_S):
        task_id = task.id
        job_id = str(task_id) if task.attempts == 0 else retry_job_id(str(task_id), task.attempts)
        if await ctx.redis.enqueue_job(JOB_RUN_TASK, job_id, _job_id=job_id) is None \
                and task.enqueued_at is not None:
            # The job id is taken: queued behind others, or held by a worker that died
            # before claiming (arq frees it only after the job timeout). A second delivery
            # is harmless, since the claim is conditional.
            fresh = retry_job_id(str(task_id), int(time.time()))
            await ctx.redis.enqueue_job(JOB_RUN_TASK, fresh, _job_id=fresh)
        await tasks.mark_enqueued(ctx.pool, task_id)
        count += 1
    return count


async def release_expired(ctx: WorkerContext) -> int:
    """Processing tasks whose worker died: remove their half-made generation, retry or fail."""
    count = 0
    for task in await tasks.list_expired_leases(ctx.pool):
        status = await tasks.release_expired(
            ctx.pool, task.id, task.worker_id, ctx.settings.max_attempts,
            f"worker {task.worker_id} stopped responding {task.attempts} time(s); giving up",
        )
        if status is None:
            continue
        await _remove_task_replicas(ctx, task)
        await events.add(ctx.pool, task.model_id, "warning",
                         f"worker {task.worker_id} lost task {task.id}; task is now {status}",
                         task_id=task.id)
        log.warning("task_lease_expired", task=str(task.id), new_status=status)
        count += 1
    return count


async def _remove_task_replicas(ctx: WorkerContext, task: tasks.Task) -> None:
    """Remove the replicas a dead task started, unless they already serve (a canary's
    candidate loses its share of traffic first)."""
    if task.phase in (Phase.canary, Phase.shadow):
        await traffic_phase.abandon(ctx, task.model_id)
    mine = await replica_lifecycle.starting_of_task(ctx, task.model_id, task.id)
    if mine:
        await replica_lifecycle.remove(ctx, mine, ReplicaState.failed, grace_s=0)


def _orphaned(row: ReplicaBrief | None, busy: set[UUID],
              kept: dict[UUID, set[int]]) -> bool:
    """Nobody owns this replica: no row, a finished row, or a generation no task is making
    that neither serves nor is kept warm for a rollback (worker/warm.py)."""
    if row is None or row.state in (ReplicaState.stopped, ReplicaState.failed):
        return True
    if row.model_id in busy:
        return False  # a task is working on this model; it owns its replicas
    return row.generation not in kept.get(row.model_id, set())


async def remove_orphans(ctx: WorkerContext, found: list[ReplicaInfo]) -> int:
    """Remove replicas that no serving generation and no processing task owns, among
    `found` (the runtime's listing of this pass).

    Never touches the active generation; a replica is only judged while no task of its
    model is processing (a crash mid-switch leaves both generations: the old one goes).
    """
    if not found:
        return 0
    # Read after listing: a task claimed in between is seen as busy, so its new replicas
    # (absent from `found` or not) are never judged orphans.
    busy = await tasks.models_with_processing_task(ctx.pool)
    ids = [i.replica_id for i in found]
    rows = {r.id: r for r in await replicas.get_many_brief(ctx.pool, ids)}
    kept = await deployments.kept_generations(ctx.pool)
    orphans = [i for i in found if _orphaned(rows.get(i.replica_id), busy, kept)]
    for info in orphans:
        log.warning("orphan_replica_removed", replica=str(info.replica_id),
                    generation=info.generation)
    if orphans:
        await replica_lifecycle.stop_and_remove(ctx, [i.runtime_ref for i in orphans],
                                                ctx.settings.stop_grace_s)
        await replicas.set_state(ctx.pool, [i.replica_id for i in orphans
                                            if i.replica_id in rows], ReplicaState.stopped)
    return len(orphans)


async def forget_vanished(ctx: WorkerContext, found: list[ReplicaInfo]) -> int:
    """Rows that say a replica is starting, draining or ready outside the serving
    generation while nothing of it runs: a worker killed between removing a replica and
    recording it (or before its start was recorded) leaves one. They are recorded as
    stopped (failed if never ready), so nothing counts them as live any more.

    Only rows of models no task is processing (a task owns its replicas, and the scale
    that left replicas draining finishes them on its retry), only replicas this runtime
    manages, and only rows unchanged for VANISHED_AFTER_S: a repair's replacement is
    recorded a moment before its runtime starts it, with no task. A replica started
    before its row last changed is in `found`, the pass's listing, taken just before.
    The rows are read before the tasks: a task claimed in between has its rows (if any
    yet) judged busy.
    """
    rows = await replicas.list_unserving_brief(ctx.pool, VANISHED_AFTER_S)
    if not rows:
        return 0
    running = {i.replica_id for i in found}
    busy = await tasks.models_with_processing_task(ctx.pool)
    gone = [r for r in rows if r.model_id not in busy and r.id not in running
            and manages(ctx.runtime, r.endpoint)]
    for state, ids in ((ReplicaState.failed, [r.id for r in gone
                                              if r.state == ReplicaState.starting]),
                       (ReplicaState.stopped, [r.id for r in gone
                                               if r.state != ReplicaState.starting])):
        if ids:
            await replicas.set_state(ctx.pool, ids, state)
    for row in gone:
        log.warning("vanished_replica_recorded", replica=str(row.id), state=row.state,
                    generation=row.generation)
    return len(gone)


async def heartbeat(ctx: WorkerContext) -> None:
    """Tell the API this worker is alive (GET /readyz counts these keys)."""
    beat = WorkerHeartbeat(ctx.worker_id, ctx.runtime.name, time.time())
    await ctx.redis.set(WORKER_KEY_PREFIX + ctx.worker_id, beat.encode(), ex=WORKER_TTL_S)


async def reconcile_once(ctx: WorkerContext) -> None:
    """One pass; Postgres-only steps first, so a Redis outage does not stop them."""
    actions = ctx.metrics.reconciler_actions
    actions.labels("release_expired_task").inc(await release_expired(ctx))
    busy = await tasks.models_with_processing_task(ctx.pool)
    actions.labels("replace_crashed_replica").inc(await replace_crashed(ctx, busy))
    actions.labels("close_warm_window").inc(await warm.expire(ctx))
    found = await ctx.runtime.list()
    actions.labels("remove_orphan_replica").inc(await remove_orphans(ctx, found))
    actions.labels("forget_vanished_replica").inc(await forget_vanished(ctx, found))
    for state, count in (await replicas.count_live_by_state(ctx.pool)).items():
        ctx.metrics.replicas.labels(state).set(count)
    await heartbeat(ctx)
    ctx.metrics.queue_depth.set(await ctx.redis.zcard(QUEUE_NAME))
    actions.labels("enqueue_pending_task").inc(await enqueue_pending(ctx))


async def run_forever(ctx: WorkerContext) -> None:
    """Reconcile every interval until cancelled (and prune every `retention_interval_s`);
    a failing step is logged, never fatal."""
    next_prune = time.monotonic()
    while True:
        try:
            await reconcile_once(ctx)
        except (DatabaseError, RedisError, OSError) as exc:
            log.warning("reconcile_failed", error=str(exc))
        except Exception:
            log.exception("reconcile_crashed")
        try:
            await retention.cap_replica_logs(ctx)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + ctx.settings.retention_interval_s
                await retention.prune(ctx)
        except (DatabaseError, OSError) as exc:
            log.warning("retention_failed", error=str(exc))
        except Exception:
            log.exception("retention_crashed")
        await asyncio.sleep(ctx.settings.reconcile_interval_s)
