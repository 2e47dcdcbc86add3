"""Model revisions (issue 26): every upload and every change of a model's source is one
immutable row (its source, content digest and size); generations pin one by number."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import UniqueViolation, translated
from db.pool import Executor

_COLUMNS = "model_id, number, origin, source, digest, size_bytes, files_removed_at, created_at"
# How many of a model's newest served generations stay rollback targets: their revisions'
# files are kept (worker/retention.py).
ROLLBACK_TARGETS = 5
# The most revisions one model may have: a tenant changing its source in a loop cannot
# grow the table without bound (each upload is bounded by the store quota as well).
MAX_REVISIONS = 1000


@dataclass(frozen=True, slots=True)
class Revision:
    model_id: UUID
    number: int
    origin: str
    source: dict[str, Any]
    digest: str
    size_bytes: int
    files_removed_at: datetime | None
    created_at: datetime

    @property
    def id(self) -> str:
        """The revision's id as the API shows it."""
        return f"r{self.number}"


def _revision(row: Any) -> Revision | None:
    return Revision(**dict(row)) if row is not None else None


async def next_number(db: Executor, model_id: UUID) -> int:
    async with translated():
        number: int = await db.fetchval(
            "SELECT coalesce(max(number), 0) + 1 FROM model_revisions WHERE model_id = $1",
            model_id)
    return number


async def insert(db: Executor, model_id: UUID, number: int, origin: str,
                 source: dict[str, Any], digest: str, size_bytes: int) -> Revision:
    """Record revision `number` (a UniqueViolation if another took that number first)."""
    async with translated():
        row = await db.fetchrow(
            f"""INSERT INTO model_revisions (model_id, number, origin, source, digest,
                                             size_bytes)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}""",
            model_id, number, origin, source, digest, size_bytes)
    revision = _revision(row)
    assert revision is not None
    return revision


async def count(db: Executor, model_id: UUID) -> int:
    async with translated():
        found: int = await db.fetchval(
            "SELECT count(*) FROM model_revisions WHERE model_id = $1", model_id)
    return found


async def latest(db: Executor, model_id: UUID) -> Revision | None:
    async with translated():
        return _revision(await db.fetchrow(
            f"""SELECT {_COLUMNS} FROM model_revisions WHERE model_id = $1
                ORDER BY number DESC LIMIT 1""", model_id))


async def get(db: Executor, model_id: UUID, number: int) -> Revision | None:
    async with translated():
        return _revision(await db.fetchrow(
            f"SELECT {_COLUMNS} FROM model_revisions WHERE model_id = $1 AND number = $2",
            model_id, number))


async def list_for_model(db: Executor, model_id: UUID, limit: int = 100) -> list[Revision]:
    """The model's revisions, newest first."""
    async with translated():
        rows = await db.fetch(
            f"""SELECT {_COLUMNS} FROM model_revisions WHERE model_id = $1
                ORDER BY number DESC LIMIT $2""", model_id, limit)
    return [Revision(**dict(r)) for r in rows]


async def unused_uploads(db: Executor, batch: int = 100) -> list[Revision]:
    """Uploaded revisions whose files nothing needs any more: not a model's newest revision
    (the next deploy's), not pinned by a generation with a live replica, not the serving or
    the warm previous generation's, and not among the model's `ROLLBACK_TARGETS` newest
    served generations."""
    async with translated():
        rows = await db.fetch(
            f"""SELECT {_COLUMNS} FROM model_revisions v
                WHERE v.origin = 'upload' AND v.files_removed_at IS NULL
                  AND v.number < (SELECT max(number) FROM model_revisions n
                                  WHERE n.model_id = v.model_id)
                  AND NOT EXISTS (
                      SELECT 1 FROM deployment_generations g
                      LEFT JOIN deployments d ON d.model_id = g.model_id
                      WHERE g.model_id = v.model_id AND g.revision = v.number AND (
                          g.generation = d.active_generation
                          OR g.generation = d.previous_generation
                          OR EXISTS (SELECT 1 FROM replicas r
                                     WHERE r.model_id = g.model_id
                                       AND r.generation = g.generation
                                       AND r.state IN ('starting', 'ready', 'draining'))
                          OR g.generation IN (
                              SELECT s.generation FROM deployment_generations s
                              WHERE s.model_id = g.model_id AND s.served_at IS NOT NULL
                              ORDER BY s.generation DESC LIMIT $2)))
                ORDER BY v.created_at LIMIT $1""", batch, ROLLBACK_TARGETS)
    return [Revision(**dict(r)) for r in rows]


async def mark_files_removed(db: Executor, model_id: UUID, number: int) -> None:
    async with translated():
        await db.execute(
            """UPDATE model_revisions SET files_removed_at = now()
               WHERE model_id = $1 AND number = $2""", model_id, number)


async def for_source(db: Executor, model_id: UUID, source: dict[str, Any],
                     digest: str) -> Revision:
    """The revision of the model's `source`: its newest revision if that one has this source,
    else a new `source` revision (a change of source made without one: registration, an old
    row). Two callers racing both end with the same newest revision."""
    for _ in range(5):
        newest = await latest(db, model_id)
        if newest is not None and newest.source == source:
            return newest
        number = newest.number + 1 if newest is not None else 1
        try:
            return await insert(db, model_id, number, "source", source, digest, 0)
        except UniqueViolation:
            continue
    raise RuntimeError("could not record a revision after five tries")
