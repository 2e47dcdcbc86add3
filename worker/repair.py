"""Replace a crashed replica of a serving generation.

Only one reconciler wins the ready → failed transition of a replica, so only one
replaces it. The deployment shows `degraded` with an event until the replacement is
healthy; a rollout that starts meanwhile supersedes the replacement.
"""

import asyncio
from uuid import UUID

import structlog

from db import deployments, events, models, replicas
from db.replicas import Replica, ReplicaBrief
from schemas.tasks import DeploymentConfig, DeploymentStatus, ReplicaState
from worker import replica_lifecycle
from worker.admission import capacity
from worker.context import WorkerContext
from worker.health import ReplicaFailed, wait_ready
from worker.publish import publish_routes
from worker.runtimes.base import ReplicaInfo, RuntimeFailure, manages

log = structlog.get_logger(__name__)


async def _crashed(ctx: WorkerContext, replica: ReplicaBrief) -> ReplicaInfo | None:
    """The runtime's view of a replica that should be serving but is not, else None."""
    if not replica.runtime_ref:
        return None
    info = await ctx.runtime.inspect(replica.runtime_ref)
    if info is not None and info.running:
        return None
    return info or ReplicaInfo(runtime_ref=replica.runtime_ref, replica_id=replica.id,
                               model_id=replica.model_id, generation=replica.generation,
                               running=False)


async def replace_crashed(ctx: WorkerContext, busy: set[UUID]) -> int:
    """Find serving replicas that died and replace each; returns how many were replaced."""
    replaced = 0
    for brief in await replicas.list_serving_brief(ctx.pool):
        if brief.model_id in busy or not manages(ctx.runtime, brief.endpoint):
            continue  # a task owns it, or it lives on another host (that host's workers')
        info = await _crashed(ctx, brief)
        if info is None:
            continue
        found = await replicas.get_many(ctx.pool, [brief.id])
        if not found:
            continue
        replica = found[0]
        reason = info.describe_exit()
        if not await replicas.transition(ctx.pool, replica.id, ReplicaState.ready,
                                          ReplicaState.failed, reason):
            continue  # another reconciler, or a rollout, got there first
        await _announce(ctx, replica, reason)
        if await _start_replacement(ctx, replica):
            replaced += 1
    return replaced


async def _announce(ctx: WorkerContext, replica: Replica, reason: str) -> None:
    await publish_routes(ctx, replica.model_id)
    await deployments.set_status(ctx.pool, replica.model_id, DeploymentStatus.degraded)
    await events.add(ctx.pool, replica.model_id, "warning",
                     f"replica {replica.id} {reason}; starting a replacement",
                     generation=replica.generation)
    log.warning("replica_crashed", replica=str(replica.id), reason=reason)
    if replica.runtime_ref:
        await replica_lifecycle.remove(ctx, [replica.id], ReplicaState.failed, grace_s=0)


async def _start_replacement(ctx: WorkerContext, dead: Replica) -> bool:
    model = await models.get(ctx.pool, dead.model_id)
    deployment = await deployments.get(ctx.pool, dead.model_id)
    if model is None or deployment is None or deployment.active_generation != dead.generation:
        return False
    config = DeploymentConfig.model_validate(deployment.config)
    try:
        env = await replica_lifecycle.generation_env(ctx, model, dead.generation, config)
    except replica_lifecycle.SecretsUnreadable as exc:
        await events.add(ctx.pool, model.id, "error", f"cannot replace replica: {exc}",
                         generation=dead.generation)
        return False
    memory_mb = dead.memory_mb or replica_lifecycle.placed_memory_mb(
        ctx, model, config, dead.generation)
    try:
        # Under the capacity lock, like a rollout's starts: neither takes the other's room.
        async with capacity.placing(ctx, memory_mb):
            new_id, started = await replica_lifecycle.start(
                ctx, model, dead.generation, dead.task_id, config, env, memory_mb,
                replaces=dead.runtime_ref)
    except capacity.NoCapacity as exc:
        await events.add(ctx.pool, model.id, "error",
                         f"cannot replace replica: not enough capacity on this worker: {exc}",
                         generation=dead.generation)
        return False
    except RuntimeFailure as exc:  # the row is already `failed`
        await events.add(ctx.pool, model.id, "error", f"replacement replica failed: {exc}",
                         generation=dead.generation)
        return False
    try:
        deadline = asyncio.get_running_loop().time() + ctx.settings.deploy_timeout_s
        await wait_ready(ctx.runtime, ctx.http, started, deadline)
    except (RuntimeFailure, ReplicaFailed) as exc:
        await replica_lifecycle.remove(ctx, [new_id], ReplicaState.failed, grace_s=0)
        await events.add(ctx.pool, model.id, "error", f"replacement replica failed: {exc}",
                         generation=dead.generation)
        return False
    return await _put_in_service(ctx, dead, new_id)


async def _put_in_service(ctx: WorkerContext, dead: Replica, new_id: UUID) -> bool:
    if not await replicas.transition(ctx.pool, new_id, ReplicaState.starting,
                                      ReplicaState.ready):
        # a rollout moved on
        await replica_lifecycle.remove(ctx, [new_id], ReplicaState.stopped, grace_s=0)
        return False
    await publish_routes(ctx, dead.model_id)
    deployment = await deployments.get(ctx.pool, dead.model_id)
    if deployment is not None and deployment.status == DeploymentStatus.degraded:
        await deployments.set_status(ctx.pool, dead.model_id, DeploymentStatus.complete)
    await events.add(ctx.pool, dead.model_id, "info",
                     f"replica {new_id} replaced crashed replica {dead.id}",
                     generation=dead.generation)
    return True
