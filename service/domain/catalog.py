"""The model registry's HTTP-facing logic: register, show, grant and revoke permissions."""

from typing import Any
from uuid import UUID, uuid4

import asyncpg

from db import dependencies, models, permissions, revisions, users
from db.errors import UniqueViolation
from db.models import Model
from edge.auth.permissions import permission_on
from schemas.auth import GrantRequest, ModelOut, Permission, Principal
from schemas.errors import Conflict, Invalid, NotFound
from schemas.models import ModelCreate
from schemas.revisions import source_digest
from schemas.settings import Settings
from service.domain import model_sources, quotas


async def _dependency_ids(pool: asyncpg.Pool, principal: Principal,
                          refs: list[str]) -> list[UUID]:
    """The models `refs` name; each must be readable by the registering user, and one that
    is not answers exactly as a missing one (404), so no answer tells a private model
    exists (review H1)."""
    ids = []
    for ref in refs:
        dep = await models.find(pool, ref)
        if dep is None or not await _readable(pool, principal, dep):
            raise NotFound(f"dependency {ref!r} not found", {"dependency": ref})
        ids.append(dep.id)
    return ids


async def register(pool: asyncpg.Pool, settings: Settings, principal: Principal,
                   body: ModelCreate) -> Model:
    """Create a model owned by the calling user, with its dependencies (each readable by
    them), if its source is allowed and their models quota has room (403)."""
    owner_id = principal.user_id
    assert owner_id is not None, "a user registers models"
    await model_sources.check(pool, settings, body.source, owner_id, principal.is_admin)
    dep_ids = await _dependency_ids(pool, principal, body.dependencies)
    try:
        async with quotas.new_model_slot(pool, settings, owner_id) as conn:
            model = await models.create(
                conn, model_id=uuid4(), owner_id=owner_id, name=body.name,
                source=body.source.model_dump(exclude_none=True),
                dimension=body.source.dimension, access_level=body.access_level,
                default_permission=body.default_permission)
            await dependencies.add(conn, model.id, dep_ids)
            # Revision r1: the source it was registered with (issue 26).
            await revisions.for_source(conn, model.id, model.source, source_digest(model.source))
    except UniqueViolation:
        raise Conflict(f"you already have a model named {body.name!r}") from None
    return model


async def _readable(pool: asyncpg.Pool, principal: Principal, model: Model) -> bool:
    level, _ = await permission_on(pool, principal, model)
    return level >= Permission.read


def shown_source(source: dict[str, Any], owner_view: bool) -> dict[str, Any]:
    """The source as a caller sees it: a host path in `location` (the model store's folder,
    an administrator's path) only for the model's owners (review L5); `package:` names stay."""
    location = source.get("location")
    if owner_view or not isinstance(location, str) or location.startswith("package:"):
        return source
    return {key: value for key, value in source.items() if key != "location"}


async def describe(pool: asyncpg.Pool, model: Model, viewer: Principal) -> ModelOut:
    """The model as `viewer` may see it: its dependencies only those the viewer can read,
    so a readable model never names a private one its reader cannot (review L1), and its
    source's host path only if the viewer owns it (review L5)."""
    deps = [dep.identifier for dep in await models.dependencies_of(pool, model.id)
            if await _readable(pool, viewer, dep)]
    level, _ = await permission_on(pool, viewer, model)
    owner_view = level >= Permission.owner
    return ModelOut(id=model.id, identifier=model.identifier, owner=model.owner,
                    name=model.name, source=shown_source(model.source, owner_view),
                    train_status=model.train_status,
                    access_level=model.access_level, default_permission=model.default_permission,
                    parent_id=model.parent_id, dependencies=deps, metadata=model.metadata,
                    created_at=model.created_at)


async def _user_id(pool: asyncpg.Pool, username: str) -> int:
    """The user a grant names. Granting to nobody must fail, so this answer does tell an
    owner whether a username exists; usernames are not secret here: every model is named
    `owner/name` wherever it is shown (lists, dependencies, the gateway's routes)."""
    user = await users.get_by_name(pool, username)
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user.id


async def grant(pool: asyncpg.Pool, model: Model, body: GrantRequest) -> None:
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise Invalid("invalid request: expires_at needs a time zone")
    user_id = await _user_id(pool, body.username)
    await permissions.upsert(pool, model.id, user_id, body.permission, body.expires_at)


async def revoke(pool: asyncpg.Pool, model: Model, username: str) -> None:
    """Remove the user's grant; 404 alike for an unknown user and one with no grant."""
    user = await users.get_by_name(pool, username)
    if user is None or not await permissions.delete(pool, model.id, user.id):
        raise NotFound(f"{username!r} has no grant on {model.identifier}")
