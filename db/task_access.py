"""A task with its model and the caller's grant on it, in one round trip (GET /deploy/{id})."""

from typing import Any
from uuid import UUID

from db.errors import translated
from db.models import TRAIN_STATUS, Model
from db.permissions import Grant
from db.pool import Executor
from db.tasks import Task

_TASK = """t.id, t.kind, t.model_id, t.status, t.phase, t.request, t.request_hash, t.metadata,
    t.detail, t.attempts, t.idempotency_key, t.enqueued_at, t.lease_until, t.worker_id,
    t.created_by, t.started_at, t.created_at, t.updated_at, t.finished_at"""
# Given `models m` with its owner `users u`, and `model_permissions p` with its user `users gu`.
MODEL_COLUMNS = f"""m.id AS m_id, m.owner_id AS m_owner_id, u.username AS m_owner, m.name AS m_name,
    m.source AS m_source, m.dimension AS m_dimension, {TRAIN_STATUS} AS m_train_status,
    m.access_level AS m_access_level, m.default_permission AS m_default_permission,
    m.parent_id AS m_parent_id, m.metadata AS m_metadata, m.created_at AS m_created_at"""
GRANT_COLUMNS = """p.user_id AS g_user_id, gu.username AS g_username, p.permission AS g_permission,
    p.expires_at AS g_expires_at"""


def split_model_grant(data: dict[str, Any]) -> tuple[Model, Grant | None]:
    """Take the MODEL_COLUMNS and GRANT_COLUMNS out of `data`."""
    model = Model(**{k[2:]: data.pop(k) for k in list(data) if k.startswith("m_")})
    grant_fields = {k[2:]: data.pop(k) for k in list(data) if k.startswith("g_")}
    grant = (Grant(model_id=model.id, **grant_fields)
             if grant_fields["permission"] is not None else None)
    return model, grant


def _split(row: Any) -> tuple[Task, Model, Grant | None]:
    data = dict(row)
    model, grant = split_model_grant(data)
    return Task(**data), model, grant


async def get_with_access(db: Executor, task_id: UUID, kind: str,
                          user_id: int | None) -> tuple[Task, Model, Grant | None] | None:
    """The task of this kind, its model, and `user_id`'s grant on that model (if any)."""
    async with translated():
        row = await db.fetchrow(
            f"""SELECT {_TASK}, {MODEL_COLUMNS}, {GRANT_COLUMNS}
                FROM tasks t
                JOIN models m ON m.id = t.model_id
                JOIN users u ON u.id = m.owner_id
                LEFT JOIN model_permissions p ON p.model_id = m.id AND p.user_id = $3
                LEFT JOIN users gu ON gu.id = p.user_id
                WHERE t.id = $1 AND t.kind = $2""",
            task_id, kind, user_id)
    return _split(row) if row is not None else None
