"""Replicas: one row per model-server instance a runtime started."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor
from schemas.tasks import LIVE_REPLICA_STATES, ReplicaState

_COLUMNS = """id, model_id, generation, task_id, runtime, runtime_ref, endpoint, state,
    reported_status, created_at, updated_at, memory_mb, awaiting_health"""
LIVE_STATES = LIVE_REPLICA_STATES


@dataclass(frozen=True, slots=True)
class Replica:
    id: UUID
    model_id: UUID
    generation: int
    task_id: UUID | None
    runtime: str
    runtime_ref: str | None
    endpoint: str | None
    state: str
    reported_status: str | None
    created_at: datetime
    updated_at: datetime
    memory_mb: int | None = None
    # A candidate's replica added in its traffic phase, not routed until healthy (015).
    awaiting_health: bool = False


def _replicas(rows: list[Any]) -> list[Replica]:
    return [Replica(**dict(r)) for r in rows]


async def insert(db: Executor, *, replica_id: UUID, model_id: UUID, generation: int,
                 task_id: UUID | None, runtime: str, memory_mb: int | None = None,
                 awaiting_health: bool = False) -> None:
    """Record a replica before it is started, so a crash cannot leave an unknown one;
    `awaiting_health`: not routed before `set_healthy` (a candidate's, added mid-phase)."""
    async with translated():
        await db.execute(
            """INSERT INTO replicas (id, model_id, generation, task_id, runtime, memory_mb,
                                     awaiting_health)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            replica_id, model_id, generation, task_id, runtime, memory_mb, awaiting_health,
        )


async def set_healthy(db: Executor, replica_id: UUID) -> bool:
    """A replica that awaited its health check answered: route it (if still starting)."""
    async with translated():
        result: str = await db.execute(
            """UPDATE replicas SET awaiting_health = false, updated_at = now()
               WHERE id = $1 AND state = 'starting' AND awaiting_health""", replica_id)
    return result.endswith(" 1")


async def set_started(db: Executor, replica_id: UUID, runtime_ref: str, endpoint: str) -> None:
    async with translated():
        await db.execute(
            """UPDATE replicas SET runtime_ref = $2, endpoint = $3, updated_at = now()
               WHERE id = $1""",
            replica_id, runtime_ref, endpoint,
        )


async def set_state(db: Executor, replica_ids: list[UUID], state: ReplicaState,
                    reported_status: str | None = None) -> None:
    async with translated():
        await db.execute(
            """UPDATE replicas SET state = $2, updated_at = now(),
                   reported_status = coalesce($3, reported_status)
               WHERE id = ANY($1::uuid[])""",
            replica_ids, state, reported_status,
        )


async def get_many(db: Executor, replica_ids: list[UUID]) -> list[Replica]:
    async with translated():
        return _replicas(await db.fetch(
            f"SELECT {_COLUMNS} FROM replicas WHERE id = ANY($1::uuid[]) ORDER BY created_at",
            replica_ids,
        ))


async def list_for_model(db: Executor, model_id: UUID, *,
                         live_only: bool = True) -> list[Replica]:
    async with translated():
        return _replicas(await db.fetch(
            f"""SELECT {_COLUMNS} FROM replicas WHERE model_id = $1
                  AND (NOT $2 OR state = ANY($3::text[])) ORDER BY generation, created_at""",
            model_id, live_only, list(LIVE_STATES),
        ))


async def count_serving(db: Executor, model_id: UUID) -> int:
    """Ready replicas of the model's serving generation (0 when none serves)."""
    async with translated():
        count: int = await db.fetchval(
            """SELECT count(*) FROM replicas r JOIN deployments d ON d.model_id = r.model_id
               WHERE r.model_id = $1 AND r.generation = d.active_generation
                 AND r.state = $2""",
            model_id, ReplicaState.ready,
        )
    return count


async def list_live(db: Executor) -> list[Replica]:
    async with translated():
        return _replicas(await db.fetch(
            f"SELECT {_COLUMNS} FROM replicas WHERE state = ANY($1::text[]) ORDER BY created_at",
            list(LIVE_STATES),
        ))


async def transition(db: Executor, replica_id: UUID, from_state: ReplicaState,
                     to_state: ReplicaState, reported_status: str | None = None) -> bool:
    """Move one replica between states only if it is still in `from_state` (races are safe)."""
    async with translated():
        result: str = await db.execute(
            """UPDATE replicas SET state = $3, updated_at = now(),
                   reported_status = coalesce($4, reported_status)
               WHERE id = $1 AND state = $2""",
            replica_id, from_state, to_state, reported_status,
        )
    return result.endswith(" 1")


async def list_serving(db: Executor) -> list[Replica]:
    """Ready replicas of every deployment's active generation."""
    async with translated():
        return _replicas(await db.fetch(
            f"""SELECT {", ".join("r." + c.strip() for c in _COLUMNS.split(","))}
                FROM replicas r JOIN deployments d ON d.model_id = r.model_id
                WHERE r.state = 'ready' AND r.generation = d.active_generation"""
        ))


@dataclass(frozen=True, slots=True)
class ReplicaBrief:
    """The few columns the reconciler reads of every replica each pass (a full `Replica`
    costs about five times as much to decode at thousands of rows)."""

    id: UUID
    model_id: UUID
    generation: int
    state: str
    runtime_ref: str | None
    endpoint: str | None


_BRIEF = "r.id, r.model_id, r.generation, r.state, r.runtime_ref, r.endpoint"


async def list_serving_brief(db: Executor) -> list[ReplicaBrief]:
    """`list_serving`, brief: ready replicas of every deployment's active generation."""
    async with translated():
        rows = await db.fetch(
            f"""SELECT {_BRIEF} FROM replicas r JOIN deployments d ON d.model_id = r.model_id
                WHERE r.state = 'ready' AND r.generation = d.active_generation""")
    return [ReplicaBrief(*r) for r in rows]


async def list_unserving_brief(db: Executor, unchanged_for_s: float) -> list[ReplicaBrief]:
    """Live replicas outside the serving set (starting, draining, or ready in a generation
    that is not its deployment's active one) whose row has not changed for
    `unchanged_for_s` seconds."""
    async with translated():
        rows = await db.fetch(
            f"""SELECT {_BRIEF} FROM replicas r LEFT JOIN deployments d ON d.model_id = r.model_id
                WHERE r.state = ANY($1::text[])
                  AND r.updated_at < now() - make_interval(secs => $2)
                  AND NOT (r.state = 'ready' AND r.generation IS NOT DISTINCT FROM
                           d.active_generation)""", list(LIVE_STATES), unchanged_for_s)
    return [ReplicaBrief(*r) for r in rows]


async def get_many_brief(db: Executor, replica_ids: list[UUID]) -> list[ReplicaBrief]:
    """`get_many`, brief."""
    async with translated():
        rows = await db.fetch(f"SELECT {_BRIEF} FROM replicas r WHERE r.id = ANY($1::uuid[])",
                              replica_ids)
    return [ReplicaBrief(*r) for r in rows]


async def count_live_by_state(db: Executor) -> dict[str, int]:
    """How many replicas are starting, ready and draining, over every model."""
    async with translated():
        rows = await db.fetch(
            "SELECT state, count(*) AS n FROM replicas WHERE state = ANY($1::text[]) "
            "GROUP BY state", list(LIVE_STATES))
    return {state: 0 for state in LIVE_STATES} | {r["state"]: int(r["n"]) for r in rows}
