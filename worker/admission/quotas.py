"""Quotas at the worker (issue 19): checked again before a rollout starts replicas, and the
clamp the autoscaler (issue 14) applies to what it wants.

The API checks against every open task; here only what runs or is being rolled out
counts, so a quota lowered by an administrator, or two accepts that raced, still cannot
start more than the limit allows.
"""

from uuid import UUID

from db import deployments, events, owner_quotas, replicas
from db.models import Model
from schemas import quotas
from schemas.quotas import QuotaExceeded, Use
from schemas.tasks import DeploymentConfig, replica_count
from worker.auto_backend import AUTO_BACKEND, backend_of, effective_backend
from worker.context import WorkerContext

RUNNING = ["processing"]


async def _limits_and_others(ctx: WorkerContext, owner_id: int,
                             model_id: UUID) -> tuple[Use, Use] | None:
    """(limits, what the owner's other models hold), or None for an administrator."""
    if await owner_quotas.is_admin(ctx.pool, owner_id):
        return None
    stored = await owner_quotas.overrides(ctx.pool, owner_id)
    limits = quotas.limits_with(quotas.defaults(ctx.settings), stored)
    rows = await owner_quotas.claims(ctx.pool, owner_id, model_id, RUNNING)
    others = quotas.total([
        quotas.claimed(r.task_kind, r.task_config, r.deployed_config,
                       await _backend_of(ctx, r), ctx.settings.replica_memory_mb,
                       ctx.settings.onnx_replica_memory_mb)
        for r in rows])
    return limits, others


async def _backend_of(ctx: WorkerContext, claim: owner_quotas.Claim) -> str | None:
    """What another model's replicas count as: an `auto` one that fell back to torch as
    torch, by its serving generation's decision (review 6)."""
    if claim.backend != AUTO_BACKEND:
        return claim.backend
    deployment = await deployments.get(ctx.pool, claim.model_id)
    return backend_of(ctx.settings, claim.model_id, claim.backend,
                      deployment.active_generation if deployment else None)


async def check_rollout(ctx: WorkerContext, model: Model, config: DeploymentConfig,
                        generation: int | None = None) -> None:
    """Raise QuotaExceeded if rolling `model` out with `config` passes a quota. Checked
    before the new generation exists (an `auto` model counted as ONNX unless it fell back
    before) and again, with `generation`, once its preparing decided its backend (review 6)."""
    found = await _limits_and_others(ctx, model.owner_id, model.id)
    if found is None:
        return
    limits, others = found
    backend = effective_backend(ctx.settings, model, generation)
    wanted = quotas.demand(config, backend, ctx.settings.replica_memory_mb,
                           ctx.settings.onnx_replica_memory_mb)
    if config.rollout.strategy != "green":
        # A canary or shadow runs both generations for its whole traffic phase (a green
        # rollout only for its switch): the quota must hold the serving one's replicas too.
        serving = await replicas.count_serving(ctx.pool, model.id)
        deployment = await deployments.get(ctx.pool, model.id)
        serving_backend = effective_backend(
            ctx.settings, model, deployment.active_generation if deployment else None)
        per_replica = quotas.replica_memory_mb(config.memory, serving_backend,
                                               ctx.settings.replica_memory_mb,
                                               ctx.settings.onnx_replica_memory_mb)
        wanted = wanted + Use(replicas=serving, memory_mb=serving * per_replica)
    # Warm replicas (a previous generation kept for a rollback) hold memory until their
    # window closes: they count, and the refusal says so.
    count, memory_mb = await owner_quotas.warm_replicas(ctx.pool, model.owner_id,
                                                        ctx.settings.replica_memory_mb)
    try:
        quotas.check(limits, others + Use(replicas=count, memory_mb=memory_mb), wanted)
    except QuotaExceeded as exc:
        if count:
            exc.args = (f"{exc}; {count} warm replica(s) ({memory_mb:,} MB) of previous "
                        "generations kept for a rollback count toward it until their window "
                        "closes (config.rollout.keep_previous_s)",)
        raise


async def replica_room(ctx: WorkerContext, model: Model, config: DeploymentConfig,
                       generation: int | None = None) -> int | None:
    """How many replicas of `model`'s `generation` with `config` the owner's quota has room
    for beside their other models; None for an administrator (no limit)."""
    found = await _limits_and_others(ctx, model.owner_id, model.id)
    if found is None:
        return None
    limits, others = found
    per_replica = quotas.replica_memory_mb(config.memory,
                                           effective_backend(ctx.settings, model, generation),
                                           ctx.settings.replica_memory_mb,
                                           ctx.settings.onnx_replica_memory_mb)
    return quotas.replica_room(limits, others, per_replica)


async def replicas_allowed(ctx: WorkerContext, model: Model, config: DeploymentConfig,
                           wanted: int) -> int:
    """The most replicas, up to `wanted`, the owner's quota lets this deployment run."""
    room = await replica_room(ctx, model, config)
    return replica_count(config, scale_to=wanted, room=room)


async def held_back(ctx: WorkerContext, model: Model, wanted: int, room: int,
                    generation: int | None) -> None:
    """The warning event on the deployment when the quota's room is below `wanted`."""
    await events.add(ctx.pool, model.id, "warning",
                     f"autoscaler wanted {wanted} replicas; the owner's quota allows "
                     f"{room}", generation=generation)


async def clamp_scale(ctx: WorkerContext, model: Model, config: DeploymentConfig,
                      wanted: int, generation: int | None = None, keep: int = 0) -> int:
    """The autoscaler's entry point: `wanted` cut to the owner's quota but to no fewer than
    `keep` (`tasks.replica_count`), with a warning event when the quota held it back."""
    room = await replica_room(ctx, model, config, generation)
    if room is not None and room < wanted:
        await held_back(ctx, model, wanted, room, generation)
    return replica_count(config, scale_to=wanted, room=room, keep=keep)
