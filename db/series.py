"""A deployment's series over time (issue 31): one row per (model, 10 s bucket, generation)
in `deployment_series`, upserted by every worker's series loop (worker/series.py) and read
by GET /api/v2/deployments/{model}/series; pruned past its retention."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor


@dataclass(frozen=True, slots=True)
class Bucket:
    model_id: UUID
    generation: int
    bucket: datetime
    requests_per_s: float
    errors_per_s: float
    # Requests per bucket of schemas.gateway.LATENCY_BOUNDS_S and the slower ones; empty: none.
    latency_buckets: list[int]
    replicas: int
    desired: int
    inflight: int


@dataclass(frozen=True, slots=True)
class GenerationReplicas:
    """A generation's replicas now, as the worker's series loop reads them."""

    model_id: UUID
    generation: int
    ready: int
    desired: int


async def upsert(db: Executor, rows: list[Bucket]) -> None:
    """Write the buckets; a bucket written before (another worker's loop, the same tick)
    takes the newer values: every worker measures the same gateways' counters."""
    if not rows:
        return
    async with translated():
        await db.executemany(
            """INSERT INTO deployment_series (model_id, generation, bucket, requests_per_s,
                   errors_per_s, latency_buckets, replicas, desired, inflight)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (model_id, bucket, generation) DO UPDATE SET
                   requests_per_s = EXCLUDED.requests_per_s,
                   errors_per_s = EXCLUDED.errors_per_s,
                   latency_buckets = EXCLUDED.latency_buckets,
                   replicas = EXCLUDED.replicas, desired = EXCLUDED.desired,
                   inflight = EXCLUDED.inflight""",
            [(r.model_id, r.generation, r.bucket, r.requests_per_s, r.errors_per_s,
              r.latency_buckets, r.replicas, r.desired, r.inflight) for r in rows])


async def read(db: Executor, model_id: UUID, since: datetime, limit: int) -> list[Bucket]:
    """The model's buckets from `since` on, oldest first, at most `limit` rows (the newest)."""
    async with translated():
        rows: list[Any] = await db.fetch(
            """SELECT * FROM (
                   SELECT model_id, generation, bucket, requests_per_s, errors_per_s,
                          latency_buckets, replicas, desired, inflight
                   FROM deployment_series WHERE model_id = $1 AND bucket >= $2
                   ORDER BY bucket DESC, generation LIMIT $3) newest
               ORDER BY bucket, generation""",
            model_id, since, limit)
    return [Bucket(**dict(r)) for r in rows]


async def generation_replicas(db: Executor) -> list[GenerationReplicas]:
    """Every generation with a live replica, and every serving generation: its ready
    replicas (a canary's candidate's stay `starting` while they carry its share of the
    traffic, worker/traffic_phase.py: those count as ready) and how many it should have
    (the serving generation: the count last asked for, else its starting and ready ones;
    another: its starting and ready ones, 0 while it drains)."""
    async with translated():
        rows: list[Any] = await db.fetch(
            """WITH candidate AS (
                   SELECT model_id, (traffic->>'generation')::int AS generation
                   FROM deployments WHERE traffic IS NOT NULL),
               live AS (
                   SELECT r.model_id, r.generation,
                          count(*) FILTER (WHERE r.state = 'ready'
                                           OR r.state = 'starting' AND c.model_id IS NOT NULL
                                              AND r.endpoint IS NOT NULL) AS ready,
                          count(*) FILTER (WHERE r.state IN ('starting', 'ready')) AS wanted
                   FROM replicas r
                   LEFT JOIN candidate c
                     ON c.model_id = r.model_id AND c.generation = r.generation
                   WHERE r.state IN ('starting', 'ready', 'draining')
                   GROUP BY r.model_id, r.generation),
               serving AS (
                   SELECT model_id, active_generation AS generation, desired_replicas
                   FROM deployments WHERE active_generation IS NOT NULL
                     AND status NOT IN ('stopped', 'not_started'))
               SELECT coalesce(l.model_id, s.model_id) AS model_id,
                      coalesce(l.generation, s.generation) AS generation,
                      coalesce(l.ready, 0)::int AS ready,
                      CASE WHEN s.model_id IS NULL THEN coalesce(l.wanted, 0)
                           ELSE coalesce(s.desired_replicas, l.wanted, 0) END::int AS desired
               FROM live l FULL JOIN serving s
                 ON s.model_id = l.model_id AND s.generation = l.generation""")
    return [GenerationReplicas(**dict(r)) for r in rows]


async def replica_generations(db: Executor,
                              replica_ids: list[UUID]) -> dict[UUID, tuple[UUID, int]]:
    """replica id → (model id, generation), for the replicas the gateways report on."""
    if not replica_ids:
        return {}
    async with translated():
        rows: list[Any] = await db.fetch(
            "SELECT id, model_id, generation FROM replicas WHERE id = ANY($1::uuid[])",
            replica_ids)
    return {r["id"]: (r["model_id"], r["generation"]) for r in rows}


async def prune(db: Executor, older_than_s: float, batch: int = 50_000) -> int:
    """Delete buckets older than `older_than_s`; at most `batch` rows a call."""
    async with translated():
        result: str = await db.execute(
            """DELETE FROM deployment_series WHERE ctid IN (
                   SELECT ctid FROM deployment_series
                   WHERE bucket < now() - make_interval(secs => $1) LIMIT $2)""",
            older_than_s, batch)
    return int(result.split()[-1])
