"""The model registry: a model is named by its uuid or by `owner/name`."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor

# A model's train status as read: an upload whose lease passed (its API died mid-upload) no
# longer holds it, and it reads as what it was before that upload (the store's folder is
# replaced only by the upload's last rename, so the weights are still those).
TRAIN_STATUS = """CASE WHEN m.train_status = 'in_progress' AND m.upload_lease_until < now()
    THEN coalesce(m.upload_status_before, 'failed') ELSE m.train_status END"""
_SELECT = f"""SELECT m.id, m.owner_id, u.username AS owner, m.name, m.source, m.dimension,
    {TRAIN_STATUS} AS train_status, m.access_level, m.default_permission, m.parent_id,
    m.metadata, m.created_at
    FROM models m JOIN users u ON u.id = m.owner_id"""


@dataclass(frozen=True, slots=True)
class Model:
    id: UUID
    owner_id: int
    owner: str
    name: str
    source: dict[str, Any]
    dimension: int | None
    train_status: str
    access_level: str
    default_permission: str
    parent_id: UUID | None
    metadata: dict[str, Any]
    created_at: datetime

    @property
    def identifier(self) -> str:
        return f"{self.owner}/{self.name}"


def _model(row: Any) -> Model | None:
    return Model(**dict(row)) if row is not None else None


def _as_uuid(ref: str) -> UUID | None:
    try:
        return UUID(ref)
    except ValueError:
        return None


async def find(db: Executor, ref: str) -> Model | None:
    """Look a model up by uuid or by `owner/name`."""
    if "\x00" in ref:
        return None  # no name holds NUL, and Postgres text cannot carry it
    model_id = _as_uuid(ref)
    async with translated():
        if model_id is not None:
            return _model(await db.fetchrow(f"{_SELECT} WHERE m.id = $1", model_id))
        owner, sep, name = ref.partition("/")
        if not sep:
            return None
        return _model(await db.fetchrow(
            f"{_SELECT} WHERE u.username = $1 AND m.name = $2", owner, name
        ))


async def get(db: Executor, model_id: UUID) -> Model | None:
    async with translated():
        return _model(await db.fetchrow(f"{_SELECT} WHERE m.id = $1", model_id))


async def create(db: Executor, *, model_id: UUID, owner_id: int, name: str,
                 source: dict[str, Any], dimension: int | None = None,
                 access_level: str = "private", default_permission: str = "read",
                 train_status: str = "complete", parent_id: UUID | None = None) -> Model:
    """Insert a model; UniqueViolation(models_owner_name_key) if the owner has that name."""
    async with translated():
        await db.execute(
            """INSERT INTO models (id, owner_id, name, source, dimension, access_level,
                                   default_permission, train_status, parent_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            model_id, owner_id, name, source, dimension, access_level, default_permission,
            train_status, parent_id,
        )
    model = await get(db, model_id)
    assert model is not None
    return model


async def update_source(db: Executor, model_id: UUID, source: dict[str, Any]) -> None:
    """Point the model at other weights; the next deploy uses them."""
    async with translated():
        await db.execute("UPDATE models SET source = $2 WHERE id = $1", model_id, source)


async def list_visible(db: Executor, user_id: int | None, is_admin: bool) -> list[Model]:
    """Models the user can at least read: all for an admin; else own, granted, public or
    protected ones (protected: any signed-in user)."""
    async with translated():
        rows = await db.fetch(
            f"""{_SELECT} WHERE $2 OR m.owner_id = $1 OR m.access_level IN ('public', 'protected')
                OR EXISTS (SELECT 1 FROM model_permissions p
                           WHERE p.model_id = m.id AND p.user_id = $1
                             AND (p.expires_at IS NULL OR p.expires_at > now()))
                ORDER BY u.username, m.name""",
            user_id, is_admin,
        )
    return [Model(**dict(r)) for r in rows]


async def dependencies_of(db: Executor, model_id: UUID) -> list[Model]:
    """The models `model_id` depends on (model_dependencies), by owner/name."""
    async with translated():
        rows = await db.fetch(
            f"""{_SELECT} JOIN model_dependencies d ON d.dependency_id = m.id
                WHERE d.model_id = $1 ORDER BY u.username || '/' || m.name""", model_id)
    return [Model(**dict(r)) for r in rows]


async def merge_metadata(db: Executor, model_id: UUID, metadata: dict[str, Any]) -> None:
    async with translated():
        await db.execute("UPDATE models SET metadata = metadata || $2 WHERE id = $1",
                         model_id, metadata)


async def claim_upload(db: Executor, model_id: UUID, upload_id: str,
                       lease_s: float) -> str | None:
    """Hold the model for one upload: train_status in_progress under a lease of `lease_s`,
    unless another upload (with a live lease) or a save holds it. Returns the status before
    (as read: an expired upload's is its own `before`), or None if held. One statement, so
    of two concurrent claims exactly one wins."""
    async with translated():
        before: str | None = await db.fetchval(
            f"""UPDATE models SET train_status = 'in_progress', upload_id = $2,
                   upload_lease_until = now() + make_interval(secs => $3),
                   upload_status_before = old.status
               FROM (SELECT m.id, {TRAIN_STATUS} AS status FROM models m
                     WHERE m.id = $1 FOR UPDATE) old
               WHERE models.id = old.id AND old.status <> 'in_progress'
               RETURNING old.status""", model_id, upload_id, lease_s)
    return before


async def merge_metadata_within(db: Executor, model_id: UUID, metadata: dict[str, Any],
                                max_bytes: int) -> bool:
    """Merge `metadata` unless the model's metadata would pass `max_bytes` (as JSON text);
    False when refused."""
    async with translated():
        result: str = await db.execute(
            """UPDATE models SET metadata = metadata || $2
               WHERE id = $1 AND octet_length((metadata || $2)::text) <= $3""",
            model_id, metadata, max_bytes)
    return result.endswith(" 1")


async def lock_uploads(conn: Executor) -> None:
    """Serialise upload claims until the caller's transaction ends (counts then claim)."""
    async with translated():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('greenroom:upload-claims'))")


async def uploads_in_flight(db: Executor, owner_id: int) -> tuple[int, int]:
    """(the owner's, everyone's) uploads that hold a live lease."""
    async with translated():
        row = await db.fetchrow(
            """SELECT count(*) FILTER (WHERE owner_id = $1) AS mine, count(*) AS everyone
               FROM models WHERE upload_id IS NOT NULL AND upload_lease_until >= now()""",
            owner_id)
    return int(row["mine"]), int(row["everyone"])


async def renew_upload(db: Executor, model_id: UUID, upload_id: str, lease_s: float) -> bool:
    """Extend an upload's lease; False when the upload no longer holds the model."""
    async with translated():
        result: str = await db.execute(
            """UPDATE models SET upload_lease_until = now() + make_interval(secs => $3)
               WHERE id = $1 AND upload_id = $2 AND train_status = 'in_progress'""",
            model_id, upload_id, lease_s)
    return result.endswith(" 1")


async def end_upload(db: Executor, model_id: UUID, upload_id: str, train_status: str,
                     store_bytes: int | None = None) -> bool:
    """Release the model from an upload with its final status (and, when installed, the
    bytes its folder holds); False when the upload no longer held it."""
    async with translated():
        result: str = await db.execute(
            """UPDATE models SET train_status = $3, upload_id = NULL, upload_lease_until = NULL,
                   upload_status_before = NULL, store_bytes = coalesce($4, store_bytes)
               WHERE id = $1 AND upload_id = $2""",
            model_id, upload_id, train_status, store_bytes)
    return result.endswith(" 1")


async def live_upload_ids(db: Executor) -> set[str]:
    """The scratch folders of uploads that still hold their lease."""
    async with translated():
        rows = await db.fetch("SELECT upload_id FROM models WHERE upload_id IS NOT NULL "
                              "AND upload_lease_until >= now()")
    return {r["upload_id"] for r in rows}


async def set_train_status(db: Executor, model_id: UUID, train_status: str) -> None:
    async with translated():
        await db.execute("UPDATE models SET train_status = $2 WHERE id = $1",
                         model_id, train_status)
