"""What a principal may do with a model: none, read, write or owner, and until when.

Admins and the model's owner are owners; a job token reads its own model; anonymous
callers read public models; other users get the better of their unexpired grant and the
model's default permission (public and protected models only).
"""

from datetime import UTC, datetime

import asyncpg

from db import permissions, users
from db.models import Model
from db.permissions import Grant
from schemas.auth import Permission, Principal


def resolve(principal: Principal, model: Model, grant: Grant | None,
            now: datetime | None = None) -> tuple[Permission, datetime | None]:
    """The principal's permission on the model and, if it comes from a grant, its expiry."""
    if principal.kind == "job":
        return (Permission.read if principal.model_id == model.id else Permission.none), None
    if principal.kind != "user":
        public = principal.kind == "anonymous" and model.access_level == "public"
        return (Permission.read if public else Permission.none), None
    if principal.is_admin or principal.user_id == model.owner_id:
        return Permission.owner, None
    now = now or datetime.now(UTC)
    granted = Permission.none
    if grant is not None and (grant.expires_at is None or grant.expires_at > now):
        granted = Permission.parse(grant.permission)
    default = Permission.none
    if model.access_level in ("public", "protected"):
        default = Permission.parse(model.default_permission)
    if granted >= default and granted > Permission.none:
        return granted, grant.expires_at if grant else None
    return default, None


def knows_of(principal: Principal, model: Model, level: Permission) -> bool:
    """Whether the principal may learn that the model exists: it can read it, or its token
    was issued for it. Anyone else is answered as if the model were missing (review L1)."""
    return level >= Permission.read or (
        principal.model_id is not None and principal.model_id == model.id)


async def permission_on(pool: asyncpg.Pool, principal: Principal,
                        model: Model) -> tuple[Permission, datetime | None]:
    """`resolve`, reading the principal's grant on the model when it could matter."""
    grant = None
    owner_or_admin = principal.is_admin or principal.user_id == model.owner_id
    if principal.kind == "user" and principal.user_id is not None and not owner_or_admin:
        grant = await permissions.get(pool, model.id, principal.user_id)
    return resolve(principal, model, grant)


async def user_permission_on(pool: asyncpg.Pool, user_id: int, model: Model) -> Permission:
    """The permission the user `user_id` holds on the model by the rule their own calls
    get: a model's owner acting through a model of theirs (a dependency) has no more."""
    user = await users.get(pool, user_id)
    if user is None:
        return Permission.none
    principal = Principal(kind="user", user_id=user.id, username=user.username,
                          is_admin=user.is_admin)
    level, _ = await permission_on(pool, principal, model)
    return level
