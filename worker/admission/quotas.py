"""Quotas at the worker (issue 19): checked again before a rollout starts replicas, and the
clamp the autoscaler (issue 14) applies to what it wants.

The API checks against every open task; here only what runs or is being rolled out
counts, so a quota lowered by an administrator, or two accepts that raced, still cannot
start more than the limit allows.
"""

from uuid import UUID

from db import events
from db import quotas as quota_rows
from db.models import Model
from schemas import quotas
from schemas.quotas import Use
from schemas.tasks import DeploymentConfig
from worker.context import WorkerContext

RUNNING = ["processing"]


async def _limits_and_others(ctx: WorkerContext, owner_id: int,
                             model_id: UUID) -> tuple[Use, Use] | None:
    """(limits, what the owner's other models hold), or None for an administrator."""
    if await quota_rows.is_admin(ctx.pool, owner_id):
        return None
    stored = await quota_rows.overrides(ctx.pool, owner_id)
    limits = quotas.limits_with(quotas.defaults(ctx.settings), stored)
    rows = await quota_rows.claims(ctx.pool, owner_id, model_id, RUNNING)
    others = quotas.total(
        quotas.claimed(r.task_kind, r.task_config, r.deployed_config, r.backend,
                       ctx.settings.replica_memory_mb) for r in rows)
    return limits, others


async def check_rollout(ctx: WorkerContext, model: Model, config: DeploymentConfig) -> None:
    """Raise QuotaExceeded if rolling `model` out with `config` passes a quota."""
    found = await _limits_and_others(ctx, model.owner_id, model.id)
    if found is None:
        return
    limits, others = found
    wanted = quotas.demand(config, model.source.get("backend"), ctx.settings.replica_memory_mb)
    quotas.check(limits, others, wanted)


async def replicas_allowed(ctx: WorkerContext, model: Model, config: DeploymentConfig,
                           wanted: int) -> int:
    """For the autoscaler: the most replicas, up to `wanted`, the owner's quota lets this
    deployment run. It clamps to this and records an event when it is below `wanted`."""
    found = await _limits_and_others(ctx, model.owner_id, model.id)
    if found is None:
        return wanted
    limits, others = found
    per_replica = quotas.replica_memory_mb(config.memory, model.source.get("backend"),
                                           ctx.settings.replica_memory_mb)
    return quotas.replicas_allowed(limits, others, wanted, per_replica)


async def clamp_scale(ctx: WorkerContext, model: Model, config: DeploymentConfig,
                      wanted: int, generation: int | None = None) -> int:
    """The autoscaler's entry point: `wanted` clamped to the owner's quota, with a warning
    event on the deployment when the quota held it back."""
    allowed = await replicas_allowed(ctx, model, config, wanted)
    if allowed < wanted:
        await events.add(ctx.pool, model.id, "warning",
                         f"autoscaler wanted {wanted} replicas; the owner's quota allows "
                         f"{allowed}", generation=generation)
    return allowed
