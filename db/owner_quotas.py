"""Quota overrides per user, and what each user holds or has asked for (issue 19)."""

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from db.errors import translated
from db.pool import Executor

LIMIT_COLUMNS = ("max_models", "max_deployments", "max_replicas", "max_memory_mb",
                 "max_store_mb")


@dataclass(frozen=True, slots=True)
class Claim:
    """What one of a user's models holds or is about to hold.

    `task_kind` and `task_config` come from the model's newest open task (a deploy
    replaces what serves, a delete frees it); `deployed_config` from the serving deployment.
    """

    model_id: UUID
    backend: str | None
    task_kind: str | None
    task_config: dict[str, Any] | None
    deployed_config: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ClaimGroup:
    """`models` of the owner's models that claim alike (the same newest open task kind and
    config, the same serving config, the same backend): one row however many models."""

    backend: str | None
    task_kind: str | None
    task_config: dict[str, Any] | None
    deployed_config: dict[str, Any] | None
    models: int


@dataclass(frozen=True, slots=True)
class OwnerQuota:
    """What a quota check needs of an owner: whether they are exempt, their overrides,
    and what their other models claim (empty for an administrator)."""

    is_admin: bool
    overrides: dict[str, int | None]
    claims: list[ClaimGroup]


@dataclass(frozen=True, slots=True)
class LiveReplica:
    model_id: UUID
    memory_mb: int | None
    backend: str | None
    config_memory_mb: int | None


async def overrides(db: Executor, user_id: int) -> dict[str, int | None]:
    """The user's overrides (None: the setting's default applies)."""
    async with translated():
        row = await db.fetchrow(
            f"SELECT {', '.join(LIMIT_COLUMNS)} FROM user_quotas WHERE user_id = $1", user_id)
    return {c: (row[c] if row is not None else None) for c in LIMIT_COLUMNS}


async def set_overrides(db: Executor, user_id: int, values: dict[str, int | None]) -> None:
    """Replace the user's overrides; a None value goes back to the default."""
    row = [values.get(c) for c in LIMIT_COLUMNS]
    async with translated():
        await db.execute(
            """INSERT INTO user_quotas (user_id, max_models, max_deployments, max_replicas,
                                        max_memory_mb, max_store_mb)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (user_id) DO UPDATE SET max_models = EXCLUDED.max_models,
                   max_deployments = EXCLUDED.max_deployments,
                   max_replicas = EXCLUDED.max_replicas,
                   max_memory_mb = EXCLUDED.max_memory_mb,
                   max_store_mb = EXCLUDED.max_store_mb, updated_at = now()""",
            user_id, *row,
        )


async def is_admin(db: Executor, user_id: int) -> bool:
    async with translated():
        return bool(await db.fetchval("SELECT is_admin FROM users WHERE id = $1", user_id))


async def lock_owner_models(conn: asyncpg.Connection, owner_id: int) -> None:
    """Hold, until the transaction ends, the owner's lock on making models: a count of
    their models and the insert after it are then one step for concurrent registers
    (review L3). A transaction-level advisory lock keyed by the owner; another owner's
    key colliding only makes the two wait on each other."""
    async with translated():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('models', $1))",
                           owner_id)


async def store_bytes(db: Executor, owner_id: int, exclude_model: UUID | None = None) -> int:
    """Bytes the owner's uploads hold in the model store: every uploaded revision whose files
    are still there (issue 26: an upload no longer replaces the files a generation runs),
    and a model uploaded before revisions by its recorded size. `exclude_model`, the model
    being uploaded to: its newest revision is not counted unless its serving or warm
    generation runs it (a revision nothing pins is removed by retention once superseded)."""
    async with translated():
        total: int = await db.fetchval(
            """SELECT (SELECT coalesce(sum(v.size_bytes), 0) FROM model_revisions v
                       JOIN models m ON m.id = v.model_id
                       LEFT JOIN deployments d ON d.model_id = v.model_id
                       WHERE m.owner_id = $1 AND v.origin = 'upload'
                         AND v.files_removed_at IS NULL
                         AND NOT (v.model_id IS NOT DISTINCT FROM $2
                                  AND v.number = (SELECT max(n.number) FROM model_revisions n
                                                  WHERE n.model_id = v.model_id)
                                  AND NOT EXISTS (
                                      SELECT 1 FROM deployment_generations g
                                      WHERE g.model_id = v.model_id AND g.revision = v.number
                                        AND g.generation IN (d.active_generation,
                                                             d.previous_generation))))
                  + (SELECT coalesce(sum(m.store_bytes), 0) FROM models m
                     WHERE m.owner_id = $1 AND m.id IS DISTINCT FROM $2
                       AND NOT EXISTS (SELECT 1 FROM model_revisions v
                                       WHERE v.model_id = m.id AND v.origin = 'upload'))
               """, owner_id, exclude_model)
    return int(total)


async def count_models(db: Executor, owner_id: int) -> int:
    async with translated():
        count: int = await db.fetchval("SELECT count(*) FROM models WHERE owner_id = $1",
                                       owner_id)
    return count


async def claims(db: Executor, owner_id: int, exclude_model: UUID | None,
                 task_statuses: list[str]) -> list[Claim]:
    """Every model of the owner (but `exclude_model`) that serves or has an open task in
    `task_statuses`, with the newest such task."""
    async with translated():
        rows = await db.fetch(
            """WITH owned AS (
                   SELECT id, source->>'backend' AS backend FROM models
                   WHERE owner_id = $1 AND id IS DISTINCT FROM $2),
               newest AS (
                   SELECT DISTINCT ON (t.model_id) t.model_id, t.kind, t.request
                   FROM tasks t JOIN owned o ON o.id = t.model_id
                   -- an embed job claims nothing and must not hide a pending deploy
                   WHERE t.status = ANY($3::text[]) AND t.kind <> 'embed'
                   ORDER BY t.model_id, t.created_at DESC)
               SELECT o.id AS model_id, o.backend, n.kind AS task_kind,
                      n.request -> 'config' AS task_config,
                      CASE WHEN d.active_generation IS NOT NULL THEN d.config END
                          AS deployed_config
               FROM owned o
               LEFT JOIN newest n ON n.model_id = o.id
               LEFT JOIN deployments d ON d.model_id = o.id
               WHERE n.model_id IS NOT NULL OR d.active_generation IS NOT NULL""",
            owner_id, exclude_model, task_statuses,
        )
    return [Claim(r["model_id"], r["backend"], r["task_kind"],
                  r["task_config"] if r["task_kind"] else None, r["deployed_config"])
            for r in rows]


# What the owner `{owner}`'s models but `{exclude}` claim, grouped: the CTEs `owned`,
# `newest`, `claim` and `grouped` (backend, task_kind, task_config, deployed_config, models).
CLAIM_GROUPS = """owned AS (
        SELECT id, source->>'backend' AS backend FROM models
        WHERE owner_id = {owner} AND id IS DISTINCT FROM {exclude}),
    newest AS (
        SELECT DISTINCT ON (t.model_id) t.model_id, t.kind, t.request
        FROM tasks t JOIN owned o ON o.id = t.model_id
        WHERE t.status = ANY({statuses}::text[]) AND t.kind <> 'embed'
        ORDER BY t.model_id, t.created_at DESC),
    claim AS (
        SELECT o.backend, n.kind AS task_kind,
               CASE WHEN n.kind IS NOT NULL THEN n.request -> 'config' END AS task_config,
               CASE WHEN d.active_generation IS NOT NULL THEN d.config END AS deployed_config
        FROM owned o
        LEFT JOIN newest n ON n.model_id = o.id
        LEFT JOIN deployments d ON d.model_id = o.id
        WHERE n.model_id IS NOT NULL OR d.active_generation IS NOT NULL),
    grouped AS (
        SELECT backend, task_kind, task_config, deployed_config, count(*) AS models
        FROM claim GROUP BY backend, task_kind, task_config, deployed_config)"""
# The columns `owner_quota_of` reads, given `users ou`, `user_quotas q` and `grouped g`.
OWNER_QUOTA_COLUMNS = """ou.is_admin, q.max_models, q.max_deployments, q.max_replicas,
    q.max_memory_mb, q.max_store_mb, g.backend, g.task_kind, g.task_config, g.deployed_config,
    g.models"""


def owner_quota_of(rows: list[Any]) -> OwnerQuota:
    """The OwnerQuota in rows of OWNER_QUOTA_COLUMNS (one row per claim group, at least one)."""
    if not rows:
        return OwnerQuota(False, dict.fromkeys(LIMIT_COLUMNS), [])
    first = rows[0]
    return OwnerQuota(
        bool(first["is_admin"]), {c: first[c] for c in LIMIT_COLUMNS},
        [ClaimGroup(r["backend"], r["task_kind"], r["task_config"], r["deployed_config"],
                    r["models"]) for r in rows if r["models"] is not None])


async def owner_quota(db: Executor, owner_id: int, exclude_model: UUID | None,
                      task_statuses: list[str]) -> OwnerQuota:
    """`is_admin`, `overrides` and `claims` (grouped) in one round trip; claims are read
    only for a non-administrator."""
    ctes = CLAIM_GROUPS.format(owner="$1", exclude="$2", statuses="$3")
    async with translated():
        rows = await db.fetch(
            f"""WITH {ctes}
               SELECT {OWNER_QUOTA_COLUMNS}
               FROM users ou
               LEFT JOIN user_quotas q ON q.user_id = ou.id
               LEFT JOIN grouped g ON NOT ou.is_admin
               WHERE ou.id = $1""",
            owner_id, exclude_model, task_statuses,
        )
    return owner_quota_of(rows)


async def live_replicas(db: Executor, owner_id: int) -> list[LiveReplica]:
    """Every starting, ready or draining replica of the owner's models."""
    async with translated():
        rows = await db.fetch(
            """SELECT r.model_id, r.memory_mb, m.source->>'backend' AS backend,
                      (d.config->>'memory')::int AS config_memory_mb
               FROM replicas r JOIN models m ON m.id = r.model_id
               LEFT JOIN deployments d ON d.model_id = r.model_id
               WHERE m.owner_id = $1 AND r.state IN ('starting', 'ready', 'draining')""",
            owner_id,
        )
    return [LiveReplica(r["model_id"], r["memory_mb"], r["backend"], r["config_memory_mb"])
            for r in rows]


async def count_serving(db: Executor, owner_id: int) -> int:
    """The owner's deployments with a serving generation."""
    async with translated():
        count: int = await db.fetchval(
            """SELECT count(*) FROM deployments d JOIN models m ON m.id = d.model_id
               WHERE m.owner_id = $1 AND d.active_generation IS NOT NULL""",
            owner_id,
        )
    return count


async def owner_of(db: Executor, model_id: UUID) -> int | None:
    async with translated():
        owner: int | None = await db.fetchval("SELECT owner_id FROM models WHERE id = $1",
                                              model_id)
    return owner


async def warm_replicas(db: Executor, owner_id: int, assumed_mb: int) -> tuple[int, int]:
    """(count, MB) of the owner's warm replicas: live replicas of a previous generation kept
    for a rollback (issue 26). A replica without a recorded memory counts `assumed_mb`."""
    async with translated():
        row = await db.fetchrow(
            """SELECT count(*) AS n, coalesce(sum(coalesce(r.memory_mb, $2)), 0) AS mb
               FROM replicas r JOIN models m ON m.id = r.model_id
               JOIN deployments d ON d.model_id = r.model_id
               WHERE m.owner_id = $1 AND r.generation = d.previous_generation
                 AND r.generation IS DISTINCT FROM d.active_generation
                 AND r.state IN ('starting', 'ready', 'draining')""",
            owner_id, assumed_mb)
    return int(row["n"]), int(row["mb"])
