"""The model registry: a model is named by its uuid or by `owner/name`."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor

_SELECT = """SELECT m.id, m.owner_id, u.username AS owner, m.name, m.source, m.dimension,
    m.train_status, m.access_level, m.default_permission, m.parent_id, m.metadata, m.created_at
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


async def claim_train_status(db: Executor, model_id: UUID, train_status: str) -> str | None:
    """Set `train_status` unless it already is that; the status before, or None if it was
    (one statement, so of two concurrent claims exactly one wins)."""
    async with translated():
        before: str | None = await db.fetchval(
            """UPDATE models m SET train_status = $2
               FROM (SELECT id, train_status FROM models WHERE id = $1 FOR UPDATE) old
               WHERE m.id = old.id AND old.train_status <> $2
               RETURNING old.train_status""", model_id, train_status)
    return before


async def set_train_status(db: Executor, model_id: UUID, train_status: str) -> None:
    async with translated():
        await db.execute("UPDATE models SET train_status = $2 WHERE id = $1",
                         model_id, train_status)
