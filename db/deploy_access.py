"""A model named by uuid or `owner/name`, the caller's grant on it and its owner's quota
figures, in one round trip (POST /deploy)."""

from uuid import UUID

from db.errors import translated
from db.models import Model
from db.owner_quotas import CLAIM_GROUPS, OWNER_QUOTA_COLUMNS, OwnerQuota, owner_quota_of
from db.permissions import Grant
from db.pool import Executor
from db.task_access import GRANT_COLUMNS, MODEL_COLUMNS, split_model_grant

_FROM = """FROM models m JOIN users u ON u.id = m.owner_id"""
# $1 (and $2): the model's id, or its owner's username and its name; then the caller and
# the task statuses that count as claims.
_BY_ID = "m.id = $1"
_BY_NAME = "u.username = $1 AND m.name = $2"


def _query(where: str, caller: str, statuses: str) -> str:
    ctes = CLAIM_GROUPS.format(owner="(SELECT owner_id FROM found)",
                               exclude="(SELECT id FROM found)", statuses=statuses)
    return f"""WITH found AS (SELECT m.id, m.owner_id {_FROM} WHERE {where}), {ctes}
        SELECT {MODEL_COLUMNS}, {GRANT_COLUMNS}, {OWNER_QUOTA_COLUMNS}
        {_FROM}
        JOIN users ou ON ou.id = m.owner_id
        LEFT JOIN model_permissions p ON p.model_id = m.id AND p.user_id = {caller}
        LEFT JOIN users gu ON gu.id = p.user_id
        LEFT JOIN user_quotas q ON q.user_id = m.owner_id
        LEFT JOIN grouped g ON NOT ou.is_admin
        WHERE {where}"""


_QUERY_BY_ID = _query(_BY_ID, "$2", "$3")
_QUERY_BY_NAME = _query(_BY_NAME, "$3", "$4")


async def model_for_deploy(db: Executor, ref: str, user_id: int | None,
                           task_statuses: list[str]
                           ) -> tuple[Model, Grant | None, OwnerQuota] | None:
    """The model `ref` names (as `db.models.find` reads it), `user_id`'s grant on it, and
    what its owner's other models claim with tasks in `task_statuses`; None if none."""
    if "\x00" in ref:
        return None  # no name holds NUL, and Postgres text cannot carry it
    args: list[object]
    try:
        query, args = _QUERY_BY_ID, [UUID(ref)]
    except ValueError:
        owner, sep, name = ref.partition("/")
        if not sep:
            return None
        query, args = _QUERY_BY_NAME, [owner, name]
    async with translated():
        rows = await db.fetch(query, *args, user_id, task_statuses)
    if not rows:
        return None
    model, grant = split_model_grant(dict(rows[0]))
    return model, grant, owner_quota_of(rows)
