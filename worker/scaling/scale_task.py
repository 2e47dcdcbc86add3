"""A `scale` task (issue 14): change the serving generation's replica count; not a rollout.

Up: new replicas start beside the serving ones and each joins the routing table as soon
as it is healthy (the gateways are told at once), not when the last one is. Down: the
replicas leaving are taken out of the table first, drained, then stopped. The task
names a target count, not a step, so a retry after a dead worker (whose half-started
replicas the reconciler removes; those that joined stay and count) lands on the same
count: no double scale. Replicas a dead scale left draining are finished off by the next one.

An autoscaler's scale to zero is called off by demand (issue 28): while its last replicas
drain they still run, so when a gateway reports a request held for the model, the task
puts them back (draining → ready, published) and ends with them serving; the held
request is answered without a cold start. The task itself does this, the model's only
open task, so "no two scaling tasks act at once" stays true: the autoscaler still decides
nothing while it runs. Once the replicas are being stopped it is too late to call off; a
request held by the time they are stopped makes the task start one replica itself (a
cold start, but without the autoscaler's decision, a new task and its claim before it).
An owner's scale to zero is never undone; such a task, ending with requests held, wakes
the autoscalers at once (LOAD_CHANNEL) so that the scale-up from zero is decided without
waiting for the next tick.
"""

from typing import Any
from uuid import UUID

import structlog
from redis.exceptions import RedisError

from db import deployments, models, replicas, tasks
from db.models import Model
from db.replicas import Replica
from db.tasks import Task
from schemas.queue import LOAD_CHANNEL
from schemas.task_payloads import ScalePayload
from schemas.tasks import DeploymentConfig, Phase, ReplicaState, TaskStatus, replica_count
from worker import replica_lifecycle
from worker.admission import quotas
from worker.context import WorkerContext
from worker.drain import drain_unless_held, gateway_reports, held_for, min_wait_for
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
    leaving = ready[wanted:] if wanted < before else []
    try:
        if wanted > before:
            await _add(ctx, progress, model, generation, config, wanted - before)
        if wanted == 0 and payload.autoscaler and leaving:
            if await _to_zero_unless_held(ctx, progress, generation, leaving,
                                          [r.id for r in leftover]):
                wanted = len(leaving)  # called off: they serve again
            elif await _held(ctx, task.model_id) and await _room_for_one(ctx, model, config,
                                                                          generation):
                # Too late to call off (they were being stopped), but a request waits:
                # this task, still the model's only one, starts a replica at once.
                await progress.event("info", "requests were held while the last replicas "
                                     "stopped: one replica started again", generation)
                await _add(ctx, progress, model, generation, config, 1)
                wanted = 1
        else:
            await _remove(ctx, progress, generation, leaving, [r.id for r in leftover])
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


async def _to_zero_unless_held(ctx: WorkerContext, progress: Progress, generation: int,
                               leaving: list[Replica], leftover: list[UUID]) -> bool:
    """The autoscaler's scale to zero: out of the table, drained and stopped, unless a
    request is held for the model while they drain; then they are put back (True)."""
    model_id = progress.task.model_id
    ids = [r.id for r in leaving if await replicas.transition(
        ctx.pool, r.id, ReplicaState.ready, ReplicaState.draining)]
    if not ids:
        await _remove(ctx, progress, generation, [], leftover)
        return False
    await publish_routes(ctx, model_id)
    await progress.enter(Phase.draining)
    outcome = await drain_unless_held(ctx.redis, model_id, generation, ids + leftover,
                                      ctx.settings.drain_timeout_s,
                                      min_wait_for(ctx.settings.routes_poll_s))
    if outcome == "held":
        back = [i for i in ids if await replicas.transition(
            ctx.pool, i, ReplicaState.draining, ReplicaState.ready)]
        if back:
            await publish_routes(ctx, model_id)
            await progress.event("info", f"scale to zero called off: requests are held for "
                                 f"the model; {len(back)} draining replica(s) serve again",
                                 generation)
            log.info("scale_to_zero_called_off", model=str(model_id), replicas=len(back))
        rest = [i for i in ids if i not in back] + leftover
        if rest:
            await drain_and_remove(ctx, progress, generation, rest)
        return bool(back)
    if outcome == "timed_out":
        await progress.event("warning", "drain timed out; removing replicas with requests "
                             "in flight", generation)
    await progress.enter(Phase.removing)
    await replica_lifecycle.remove(ctx, ids + leftover, ReplicaState.stopped,
                                   ctx.settings.stop_grace_s)
    return False


async def _held(ctx: WorkerContext, model_id: UUID) -> bool:
    """A gateway holds a request for the model (False when the reports cannot be read:
    the autoscalers, woken at the task's end, decide then)."""
    try:
        return held_for(await gateway_reports(ctx.redis), model_id) > 0
    except (RedisError, OSError) as exc:
        log.warning("held_requests_unread", model=str(model_id), error=str(exc))
        return False


async def _room_for_one(ctx: WorkerContext, model: Model, config: DeploymentConfig,
                        generation: int) -> bool:
    room = await quotas.replica_room(ctx, model, config, generation)
    return room is None or room >= 1


async def _wake_autoscalers_if_held(ctx: WorkerContext, model_id: UUID) -> None:
    """A scale to zero ended while requests wait for the model: the autoscalers decide now
    (they skipped the model while this task was open), not at their next tick."""
    if not await _held(ctx, model_id):
        return
    try:
        await ctx.redis.publish(LOAD_CHANNEL, f"scale-task:{model_id}")
    except (RedisError, OSError) as exc:  # the next tick decides it
        log.warning("autoscaler_wake_failed", model=str(model_id), error=str(exc))


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
    if not ready:
        await _wake_autoscalers_if_held(ctx, task.model_id)
