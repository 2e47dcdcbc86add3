"""A `scale` task (issue 14): change the serving generation's replica count; not a rollout.

Up: new replicas start beside the serving ones and each joins the routing table as soon
as it is healthy (the gateways are told at once), not when the last one is. Down: the
replicas leaving are taken out of the table first, drained, then stopped. The task
names a target count, not a step, so a retry after a dead worker (whose half-started
replicas the reconciler removes; those that joined stay and count) lands on the same
count: no double scale. Replicas a dead scale left draining are finished off by the next one.
"""

from typing import Any
from uuid import UUID

import structlog

from db import deployments, models, replicas, tasks
from db.models import Model
from db.replicas import Replica
from db.tasks import Task
from schemas.task_payloads import ScalePayload
from schemas.tasks import DeploymentConfig, Phase, ReplicaState, TaskStatus, replica_count
from worker import replica_lifecycle
from worker.admission import quotas
from worker.context import WorkerContext
from worker.publish import publish_routes
from worker.rollout import Progress, RolloutFailed, bring_up, drain_and_remove
from worker.runtimes.base import StartedReplica

log = structlog.get_logger(__name__)


def _serving(rows: list[Replica], generation: int) -> tuple[list[Replica], list[Replica]]:
    """(ready, draining) replicas of the serving generation, oldest first."""
    mine = [r for r in rows if r.generation == generation]
    return ([r for r in mine if r.state == ReplicaState.ready],
            [r for r in mine if r.state == ReplicaState.draining])


async def _refuse(ctx: WorkerContext, task: Task, reason: str) -> None:
    await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.refused, reason)


async def scale(ctx: WorkerContext, task: Task) -> None:
    """Bring the serving generation to the task's replica count."""
    deployment = await deployments.get(ctx.pool, task.model_id)
    model = await models.get(ctx.pool, task.model_id)
    if deployment is None or deployment.active_generation is None or model is None:
        await _refuse(ctx, task, "the model has no serving deployment to scale")
        return
    generation = deployment.active_generation
    config = DeploymentConfig.model_validate(deployment.config)
    payload = ScalePayload.model_validate(task.request)
    room = ((await quotas.replica_room(ctx, model, config, generation))
            if payload.replicas > 0 else None)
    if room is not None and room < payload.replicas:
        await quotas.held_back(ctx, model, payload.replicas, room, generation)
        if not payload.autoscaler:  # the owner asked for it: refused, not cut
            await _refuse(ctx, task, f"the owner's quota allows {room} replicas, "
                                     f"not {payload.replicas}")
            return
    # An autoscaler's scale is cut to the quota's room, keeping one replica serving.
    wanted = replica_count(config, scale_to=payload.replicas, room=room, keep=1)
    ready, leftover = _serving(await replicas.list_for_model(ctx.pool, task.model_id),
                               generation)
    progress = Progress(ctx, task)
    before = len(ready)
    await progress.enter(None, generation=generation, replicas_current=before,
                         replicas_desired=wanted)
    try:
        if wanted > before:
            await _add(ctx, progress, model, generation, config, wanted - before)
        await _remove(ctx, progress, generation, ready[wanted:] if wanted < before else [],
                      [r.id for r in leftover])
    except RolloutFailed as exc:
        await _fail(ctx, progress, generation, str(exc))
        return
    await _finish(ctx, progress, generation, before, wanted, payload.autoscaler)


async def _add(ctx: WorkerContext, progress: Progress, model: Model, generation: int,
               config: DeploymentConfig, count: int) -> None:
    """Start `count` replicas; each joins the routing table the moment it is healthy."""

    async def join(replica: StartedReplica) -> None:
        row = next((r for r in await replicas.list_for_model(ctx.pool, model.id)
                    if r.task_id == progress.task.id and r.runtime_ref == replica.runtime_ref),
                   None)
        if row is not None and await replicas.transition(ctx.pool, row.id,
                                                         ReplicaState.starting,
                                                         ReplicaState.ready):
            await publish_routes(ctx, model.id)

    turn = ctx.settings.scale_start_concurrency
    turn = turn if turn > 0 else count
    started: list[StartedReplica] = []
    while len(started) < count:  # in turns of `scale_start_concurrency` (0: all at once)
        batch = min(turn, count - len(started))
        started += await bring_up(ctx, progress, model, generation,
                                  config.model_copy(update={"replicas": batch}), join)
    await progress.enter(Phase.switching, generation=generation)
    left = await replica_lifecycle.starting_of_task(ctx, model.id, progress.task.id)
    for replica_id in left:  # each joined as it became healthy; any left over joins now
        await replicas.transition(ctx.pool, replica_id, ReplicaState.starting,
                                  ReplicaState.ready)
    if left:
        await publish_routes(ctx, model.id)
    log.info("scaled_up", model=str(model.id), added=len(started))


async def _remove(ctx: WorkerContext, progress: Progress, generation: int,
                  leaving: list[Replica], leftover: list[UUID]) -> None:
    """Out of the routing table first, then drained, then stopped."""
    ids = [r.id for r in leaving if await replicas.transition(
        ctx.pool, r.id, ReplicaState.ready, ReplicaState.draining)]
    ids += leftover
    if not ids:
        return
    await publish_routes(ctx, progress.task.model_id)
    await drain_and_remove(ctx, progress, generation, ids)


async def _fail(ctx: WorkerContext, progress: Progress, generation: int, reason: str) -> None:
    task = progress.task
    mine = await replica_lifecycle.starting_of_task(ctx, task.model_id, task.id)
    await replica_lifecycle.remove(ctx, mine, ReplicaState.failed, grace_s=0)
    ready, _ = _serving(await replicas.list_for_model(ctx.pool, task.model_id), generation)
    # Replicas that joined before the failure keep serving: count them (quotas do).
    await deployments.set_scaled_count(ctx.pool, task.model_id, generation, len(ready) or None)
    await progress.event("error", f"scaling failed: {reason}", generation)
    await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.failed, reason,
                       {"generation": generation, "timings": progress.timings})


async def _finish(ctx: WorkerContext, progress: Progress, generation: int, before: int,
                  wanted: int, by_autoscaler: bool) -> None:
    task = progress.task
    ready, _ = _serving(await replicas.list_for_model(ctx.pool, task.model_id), generation)
    await deployments.set_scaled_count(ctx.pool, task.model_id, generation, len(ready) or None)
    await deployments.set_desired(ctx.pool, task.model_id, wanted)
    if not by_autoscaler and before != len(ready):
        await progress.event("info", f"scaled {before} → {len(ready)} (by the owner)",
                             generation)
    await progress.enter(None)
    metadata: dict[str, Any] = {"generation": generation, "replicas_current": len(ready),
                                "replicas_desired": wanted, "replicas_before": before,
                                "timings": progress.timings}
    await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.done, None, metadata)
    log.info("scale_done", task=str(task.id), before=before, after=len(ready))
