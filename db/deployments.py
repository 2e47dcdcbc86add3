"""Deployments: one row per model, naming its URL and its serving generation."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor
from db.traffic import Candidate, split_of
from schemas.tasks import DeploymentStatus

_COLUMNS = """model_id, name, status, active_generation, last_generation, config, created_at,
    updated_at, desired_replicas, previous_generation, previous_until"""


@dataclass(frozen=True, slots=True)
class Deployment:
    model_id: UUID
    name: str
    status: str
    active_generation: int | None
    last_generation: int
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    desired_replicas: int | None = None
    # The generation before the serving one, kept warm for a rollback until `previous_until`.
    previous_generation: int | None = None
    previous_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """What a gateway needs to send traffic to a deployment."""

    model_id: UUID
    name: str
    identifier: str
    generation: int
    access_level: str
    replicas: list[tuple[UUID, str]]
    # Autoscaled with min 0: a gateway holds requests while it has no replica.
    scales_to_zero: bool = False
    # During a canary or shadow rollout: the candidate generation, its share, its replicas.
    candidate: Candidate | None = None
    # The revision the generation pinned (None: a generation from before revisions).
    revision: int | None = None


def _deployment(row: Any) -> Deployment | None:
    return Deployment(**dict(row)) if row is not None else None


async def get(db: Executor, model_id: UUID) -> Deployment | None:
    async with translated():
        return _deployment(await db.fetchrow(
            f"SELECT {_COLUMNS} FROM deployments WHERE model_id = $1", model_id
        ))


async def get_by_name(db: Executor, name: str) -> Deployment | None:
    async with translated():
        return _deployment(await db.fetchrow(
            f"SELECT {_COLUMNS} FROM deployments WHERE name = $1", name
        ))


async def begin_generation(db: Executor, model_id: UUID, name: str) -> tuple[Deployment, int]:
    """Create the deployment if new and allocate the next generation number (never reused)."""
    async with translated():
        row = await db.fetchrow(
            f"""INSERT INTO deployments (model_id, name, status, last_generation)
                VALUES ($1, $2, 'starting', 1)
                ON CONFLICT (model_id) DO UPDATE SET
                    last_generation = deployments.last_generation + 1,
                    status = CASE WHEN deployments.active_generation IS NULL THEN 'starting'
                                  ELSE 'in_progress' END,
                    updated_at = now()
                RETURNING {_COLUMNS}""",
            model_id, name,
        )
    deployment = _deployment(row)
    assert deployment is not None
    return deployment, deployment.last_generation


async def switch(db: Executor, model_id: UUID, generation: int, name: str,
                 config: dict[str, Any], *, name_hold_s: float = 0.0,
                 keep_previous_s: float = 0.0) -> list[UUID]:
    """Make `generation` the serving one; its replicas ready, every older live one draining.
    A serving deployment renamed keeps its old name held for it `name_hold_s` seconds.
    With `keep_previous_s` > 0 the generation that served until now stays ready (warm, not
    routed) for that long: a rollback to it inside the window is a route flip.

    Returns the ids of the replicas now draining. Call inside a transaction.
    """
    async with translated():
        if name_hold_s > 0:
            await db.execute(
                """INSERT INTO deployment_name_holds (name, model_id, until)
                   SELECT name, model_id, now() + make_interval(secs => $3) FROM deployments
                   WHERE model_id = $1 AND name <> $2 AND active_generation IS NOT NULL
                   ON CONFLICT (name) DO UPDATE SET model_id = EXCLUDED.model_id,
                       until = EXCLUDED.until""",
                model_id, name, name_hold_s,
            )
        config = stored_config(config)
        kept: int | None = await db.fetchval(
            """UPDATE deployments d SET active_generation = $2, status = 'complete', name = $3,
                   config = $4, desired_replicas = NULL, updated_at = now(),
                   previous_generation = CASE WHEN $5::float8 > 0 AND old.active_generation <> $2
                       THEN old.active_generation END,
                   previous_until = CASE WHEN $5::float8 > 0 AND old.active_generation <> $2
                       THEN now() + make_interval(secs => $5::float8) END
               FROM (SELECT active_generation FROM deployments WHERE model_id = $1
                     FOR UPDATE) old
               WHERE d.model_id = $1 RETURNING d.previous_generation""",
            model_id, generation, name, config, keep_previous_s,
        )
        await db.execute(
            """UPDATE replicas SET state = 'ready', updated_at = now()
               WHERE model_id = $1 AND generation = $2 AND state = 'starting'""",
            model_id, generation,
        )
        await db.execute(
            """UPDATE deployment_generations SET served_at = coalesce(served_at, now())
               WHERE model_id = $1 AND generation = $2""", model_id, generation)
        rows = await db.fetch(
            """UPDATE replicas SET state = 'draining', updated_at = now()
               WHERE model_id = $1 AND generation <> $2 AND state IN ('starting', 'ready')
                 AND generation IS DISTINCT FROM $3::int
               RETURNING id""",
            model_id, generation, kept,
        )
    return [r["id"] for r in rows]


def stored_config(config: dict[str, Any]) -> dict[str, Any]:
    """What `deployments.config` keeps of a deploy's config: all but the rollout's probe
    sentences (up to ~250 KB, and every gateway reload reads the column: review, Low). The
    probe stays in the task's request and in the generation's pinned config, where the
    compatibility gate (a rollback's included) reads it."""
    rollout = config.get("rollout")
    if not isinstance(rollout, dict) or "probe" not in rollout:
        return config
    return {**config, "rollout": {k: v for k, v in rollout.items() if k != "probe"}}


async def flip_to_warm(db: Executor, model_id: UUID, generation: int, config: dict[str, Any],
                       keep_previous_s: float) -> int | None:
    """A rollback inside the window: make the warm previous `generation` the serving one in
    one statement, keeping the generation that served until now warm in its place. Returns
    that generation, or None when `generation` is no longer warm (the window closed, or
    another task moved the deployment on): then a green deploy is needed."""
    config = stored_config(config)
    async with translated():
        flipped: int | None = await db.fetchval(
            """UPDATE deployments d SET active_generation = $2, config = $3,
                   previous_generation = old.active_generation,
                   previous_until = now() + make_interval(secs => $4::float8),
                   status = 'complete', desired_replicas = NULL, updated_at = now()
               FROM (SELECT active_generation FROM deployments WHERE model_id = $1
                     FOR UPDATE) old
               WHERE d.model_id = $1 AND d.previous_generation = $2
                 AND d.previous_until > now() AND d.active_generation IS NOT NULL
                 AND EXISTS (SELECT 1 FROM replicas r WHERE r.model_id = $1
                               AND r.generation = $2 AND r.state = 'ready')
               RETURNING old.active_generation""",
            model_id, generation, config, keep_previous_s)
    return flipped


async def expire_warm(db: Executor) -> list[tuple[UUID, list[UUID]]]:
    """Deployments whose warm window closed: forget the previous generation and mark its
    live replicas draining; (model, those replicas) each."""
    async with translated():
        ended = await db.fetch(
            """UPDATE deployments d SET previous_generation = NULL, previous_until = NULL
               FROM (SELECT model_id, previous_generation FROM deployments
                     WHERE previous_until <= now() FOR UPDATE SKIP LOCKED) old
               WHERE d.model_id = old.model_id
               RETURNING d.model_id, old.previous_generation""")
        out: list[tuple[UUID, list[UUID]]] = []
        for row in ended:
            ids = await db.fetch(
                """UPDATE replicas r SET state = 'draining', updated_at = now()
                   FROM deployments d WHERE d.model_id = r.model_id
                     AND r.model_id = $1 AND r.generation = $2
                     AND r.generation IS DISTINCT FROM d.active_generation
                     AND r.state IN ('starting', 'ready') RETURNING r.id""",
                row["model_id"], row["previous_generation"])
            out.append((row["model_id"], [r["id"] for r in ids]))
    return out


async def kept_generations(db: Executor) -> dict[UUID, set[int]]:
    """Every deployment's serving generation and, inside its window, the warm previous one:
    the generations whose replicas nothing may take as orphans."""
    async with translated():
        rows = await db.fetch(
            "SELECT model_id, active_generation, previous_generation FROM deployments")
    return {r["model_id"]: {g for g in (r["active_generation"], r["previous_generation"])
                            if g is not None} for r in rows}


async def set_status(db: Executor, model_id: UUID, status: DeploymentStatus) -> None:
    async with translated():
        await db.execute(
            "UPDATE deployments SET status = $2, updated_at = now() WHERE model_id = $1",
            model_id, status,
        )


async def restore_after_failure(db: Executor, model_id: UUID) -> str:
    """After a failed rollout: `complete` if a generation still serves, else `failed`."""
    async with translated():
        status: str = await db.fetchval(
            """UPDATE deployments SET updated_at = now(),
                   status = CASE WHEN active_generation IS NULL THEN 'failed' ELSE 'complete' END
               WHERE model_id = $1 RETURNING status""",
            model_id,
        )
    return status


async def stop(db: Executor, model_id: UUID) -> list[UUID]:
    """Take the deployment out of service; returns the replicas now draining."""
    async with translated():
        await db.execute(
            """UPDATE deployments SET status = 'stopped', active_generation = NULL,
                   previous_generation = NULL, previous_until = NULL,
                   updated_at = now() WHERE model_id = $1""",
            model_id,
        )
        rows = await db.fetch(
            """UPDATE replicas SET state = 'draining', updated_at = now()
               WHERE model_id = $1 AND state IN ('starting', 'ready') RETURNING id""",
            model_id,
        )
    return [r["id"] for r in rows]


async def routes(db: Executor) -> list[Route]:
    """Every serving deployment with the ready replicas of its active generation."""
    async with translated():
        rows = await db.fetch(
            """SELECT d.model_id, d.name, u.username || '/' || m.name AS identifier,
                      d.active_generation AS generation, m.access_level,
                      coalesce(array_agg(r.id ORDER BY r.created_at)
                               FILTER (WHERE r.generation = d.active_generation), '{}') AS ids,
                      coalesce(array_agg(r.endpoint ORDER BY r.created_at)
                               FILTER (WHERE r.generation = d.active_generation), '{}')
                          AS endpoints,
                      coalesce((d.config->>'autoscaling_enabled')::boolean, false)
                          AND coalesce((d.config->>'autoscaling_min')::int, 1) = 0
                          AS scales_to_zero,
                      d.traffic::text AS traffic,
                      coalesce(array_agg(r.id ORDER BY r.created_at)
                               FILTER (WHERE r.generation = (d.traffic->>'generation')::int),
                               '{}') AS candidate_ids,
                      coalesce(array_agg(r.endpoint ORDER BY r.created_at)
                               FILTER (WHERE r.generation = (d.traffic->>'generation')::int),
                               '{}') AS candidate_endpoints,
                      (SELECT g.revision FROM deployment_generations g
                       WHERE g.model_id = d.model_id AND g.generation = d.active_generation)
                          AS revision,
                      (SELECT g.revision FROM deployment_generations g
                       WHERE g.model_id = d.model_id
                         AND g.generation = ((d.traffic::text)::jsonb->>'generation')::int)
                          AS candidate_revision
               FROM deployments d
               JOIN models m ON m.id = d.model_id
               JOIN users u ON u.id = m.owner_id
               LEFT JOIN replicas r ON r.model_id = d.model_id
                    AND (r.generation = d.active_generation AND r.state = 'ready'
                         -- a candidate's replicas are healthy but stay `starting` until
                         -- the switch (worker/traffic_phase.py)
                         -- (one added in the phase only once healthy: 015)
                         OR r.generation = (d.traffic->>'generation')::int
                            AND r.state IN ('starting', 'ready') AND NOT r.awaiting_health)
               WHERE d.active_generation IS NOT NULL
               GROUP BY d.model_id, d.name, u.username, m.name, d.active_generation,
                        m.access_level, d.config, d.traffic::text"""
        )
    return [_route(r) for r in rows]


def _route(r: Any) -> Route:
    split = split_of(r["traffic"])
    candidate = None
    if split is not None and split.generation != r["generation"]:
        candidate = Candidate(split, list(zip(r["candidate_ids"], r["candidate_endpoints"],
                                              strict=True)), r["candidate_revision"])
    return Route(r["model_id"], r["name"], r["identifier"], r["generation"], r["access_level"],
                 list(zip(r["ids"], r["endpoints"], strict=True)), r["scales_to_zero"],
                 candidate, r["revision"])


async def active_generations(db: Executor) -> dict[UUID, int | None]:
    """Every deployment's serving generation (None while none serves)."""
    async with translated():
        rows = await db.fetch("SELECT model_id, active_generation FROM deployments")
    return {r["model_id"]: r["active_generation"] for r in rows}


async def name_held_by_another(db: Executor, name: str, model_id: UUID) -> bool:
    """Whether a rename left `name` held, unexpired, for a model other than `model_id`."""
    async with translated():
        return bool(await db.fetchval(
            """SELECT EXISTS (SELECT 1 FROM deployment_name_holds
                              WHERE name = $1 AND model_id <> $2 AND until > now())""",
            name, model_id,
        ))


def placeholder_name(model_id: UUID) -> str:
    """The name of a deployment row made before its first rollout: unique per model, and
    never a name a deployment may take (`~` is outside their pattern), so no one can take
    it first (review M10: a deployment named after the model's id made this a 500)."""
    return f"~{model_id}"


async def store_secrets(db: Executor, model_id: UUID, blob: bytes) -> None:
    """Keep encrypted secrets for the model's next rollouts, creating the row if new.

    A new row gets `placeholder_name(model_id)`; the rollout names it properly.
    """
    async with translated():
        await db.execute(
            """INSERT INTO deployments (model_id, name, status, secrets)
               VALUES ($1, $2, 'not_started', $3)
               ON CONFLICT (model_id) DO UPDATE SET secrets = EXCLUDED.secrets,
                   updated_at = now()""",
            model_id, placeholder_name(model_id), blob,
        )


async def get_secrets(db: Executor, model_id: UUID) -> bytes | None:
    async with translated():
        blob: bytes | None = await db.fetchval(
            "SELECT secrets FROM deployments WHERE model_id = $1", model_id)
    return blob


async def generation_is_live(db: Executor, model_id: UUID, generation: int) -> bool:
    """True while a replica of that generation is starting, ready or draining."""
    async with translated():
        return bool(await db.fetchval(
            """SELECT EXISTS (SELECT 1 FROM replicas WHERE model_id = $1 AND generation = $2
                              AND state IN ('starting', 'ready', 'draining'))""",
            model_id, generation,
        ))


async def serving(db: Executor) -> list[Deployment]:
    """Every deployment with a serving generation (the autoscaler's list)."""
    async with translated():
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM deployments WHERE active_generation IS NOT NULL")
    return [Deployment(**dict(r)) for r in rows]


async def set_desired(db: Executor, model_id: UUID, desired: int) -> None:
    """Record the replica count last asked for (by the autoscaler or the owner)."""
    async with translated():
        await db.execute(
            """UPDATE deployments SET desired_replicas = $2, updated_at = now()
               WHERE model_id = $1""", model_id, desired)


async def set_scaled_count(db: Executor, model_id: UUID, generation: int,
                           replicas: int | None) -> None:
    """After a scale: the serving config's `replicas` is the count now running (quotas
    count a deployment by it); None for zero (counted as one, what a cold start needs)."""
    async with translated():
        await db.execute(
            """UPDATE deployments SET updated_at = now(), config = CASE WHEN $3::int IS NULL
                       THEN config - 'replicas'
                       ELSE jsonb_set(config, '{replicas}', to_jsonb($3::int)) END
               WHERE model_id = $1 AND active_generation = $2""",
            model_id, generation, replicas)
