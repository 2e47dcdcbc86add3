"""Quotas at the API (issue 19): refuse what would take an owner past a limit, show use."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from db import owner_quotas, users
from db.models import Model
from db.owner_quotas import OwnerQuota
from db.pool import Executor
from schemas import quotas
from schemas.errors import Forbidden, NotFound
from schemas.quotas import QuotaExceeded, QuotaFigures, QuotaLimits, UsageResponse, Use
from schemas.settings import Settings
from schemas.tasks import DeploymentConfig

# A deploy accepted now counts every open task of the owner's other models: they were
# accepted against the same quota and will run.
OPEN = ["pending", "processing"]


class QuotaError(Forbidden):
    """A refused request (403), with the figures as the error's detail (seed 000: its data)."""

    def __init__(self, exc: QuotaExceeded) -> None:
        super().__init__(str(exc), exc.figures)
        self.figures = exc.figures


async def limits_of(pool: Executor, settings: Settings,
                    user_id: int) -> tuple[Use, QuotaLimits]:
    """The user's limits (defaults with the admin's overrides) and the overrides alone."""
    stored = await owner_quotas.overrides(pool, user_id)
    overrides = QuotaLimits(**{name: stored[f"max_{name}"] for name in quotas.QUOTA_NAMES})
    return quotas.limits_with(quotas.defaults(settings), stored), overrides


async def check_deploy(pool: asyncpg.Pool, settings: Settings, model: Model,
                       config: DeploymentConfig, owner: OwnerQuota | None = None) -> None:
    """403 if deploying `model` with `config` takes its owner past a quota.

    `owner` (read with the model, `db.deploy_access`) saves the one round trip this
    otherwise takes: the owner's exemption, overrides and what their other models claim,
    grouped so that alike models are counted once."""
    owner = owner or await owner_quotas.owner_quota(pool, model.owner_id, model.id, OPEN)
    if owner.is_admin:
        return
    limits = quotas.limits_with(quotas.defaults(settings), owner.overrides)
    current = quotas.total(
        quotas.claimed(g.task_kind, g.task_config, g.deployed_config, g.backend,
                       settings.replica_memory_mb, settings.onnx_replica_memory_mb,
                       ).times(g.models) for g in owner.claims)
    wanted = quotas.demand(config, model.source.get("backend"), settings.replica_memory_mb,
                           settings.onnx_replica_memory_mb)
    try:
        quotas.check(limits, current, wanted)
    except QuotaExceeded as exc:
        raise QuotaError(exc) from None


async def _check_new_model(conn: asyncpg.Connection, settings: Settings, owner_id: int) -> None:
    """403 if the owner already has as many models as the models quota allows."""
    if await owner_quotas.is_admin(conn, owner_id):
        return
    limits, _ = await limits_of(conn, settings, owner_id)
    held = Use(models=await owner_quotas.count_models(conn, owner_id))
    try:
        quotas.check(limits, held, Use(models=1))
    except QuotaExceeded as exc:
        raise QuotaError(exc) from None


@asynccontextmanager
async def new_model_slot(pool: asyncpg.Pool, settings: Settings,
                         owner_id: int) -> AsyncIterator[asyncpg.Connection]:
    """A transaction in which the owner may make one model; 403 if the models quota is full.

    The owner's registers take turns from the count to the commit (an advisory lock), so
    however many run at once they never pass the quota together (review L3)."""
    async with pool.acquire() as conn, conn.transaction():
        await owner_quotas.lock_owner_models(conn, owner_id)
        await _check_new_model(conn, settings, owner_id)
        yield conn


async def actual_use(pool: asyncpg.Pool, settings: Settings, owner_id: int) -> Use:
    """What runs now: models, serving deployments, live replicas and their memory."""
    live = await owner_quotas.live_replicas(pool, owner_id)
    memory = sum(r.memory_mb or quotas.replica_memory_mb(r.config_memory_mb, r.backend,
                                                         settings.replica_memory_mb,
                                                         settings.onnx_replica_memory_mb)
                 for r in live)
    return Use(models=await owner_quotas.count_models(pool, owner_id),
               deployments=await owner_quotas.count_serving(pool, owner_id),
               replicas=len(live), memory_mb=memory,
               store_mb=-(-await owner_quotas.store_bytes(pool, owner_id) // 2**20))


@dataclass(frozen=True, slots=True)
class StoreAllowance:
    """An owner's store quota against what their other uploaded models hold."""

    limit_mb: int
    held_bytes: int

    @property
    def left_bytes(self) -> int:
        return max(0, self.limit_mb * 2**20 - self.held_bytes)

    def refuse(self, asked_bytes: int) -> QuotaError:
        return QuotaError(QuotaExceeded("store_mb", -(-self.held_bytes // 2**20),
                                        -(-asked_bytes // 2**20), self.limit_mb))


async def store_allowance(pool: asyncpg.Pool, settings: Settings,
                          model: Model) -> StoreAllowance | None:
    """What the owner's store quota leaves for an upload of `model` (what the model holds
    now is replaced, so it does not count); None for an administrator (no quota)."""
    if await owner_quotas.is_admin(pool, model.owner_id):
        return None
    limits, _ = await limits_of(pool, settings, model.owner_id)
    return StoreAllowance(limits.store_mb,
                          await owner_quotas.store_bytes(pool, model.owner_id, model.id))


async def usage(pool: asyncpg.Pool, settings: Settings, user_id: int) -> UsageResponse:
    user = await users.get(pool, user_id)
    if user is None:
        raise NotFound("user not found")
    limits, overrides = await limits_of(pool, settings, user_id)
    use = await actual_use(pool, settings, user_id)
    return UsageResponse(username=user.username, unlimited=user.is_admin,
                         usage=QuotaFigures(**use.as_dict()),
                         limits=QuotaFigures(**limits.as_dict()), overrides=overrides)


async def user_id_of(pool: asyncpg.Pool, username: str) -> int:
    user = await users.get_by_name(pool, username)
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user.id


async def set_limits(pool: asyncpg.Pool, settings: Settings, username: str,
                     body: QuotaLimits) -> UsageResponse:
    """Replace a user's overrides (null or omitted: back to the default)."""
    user_id = await user_id_of(pool, username)
    await owner_quotas.set_overrides(
        pool, user_id, {f"max_{n}": v for n, v in body.model_dump().items()})
    return await usage(pool, settings, user_id)
