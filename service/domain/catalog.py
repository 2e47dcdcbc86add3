"""The model registry's HTTP-facing logic: register, show, grant and revoke permissions."""

from typing import Any
from uuid import UUID, uuid4

import asyncpg

from db import dependencies, models, permissions, users
from db.errors import UniqueViolation
from db.models import Model
from schemas.auth import GrantRequest, ModelOut
from schemas.errors import Conflict, Invalid, NotFound
from schemas.models import ModelCreate
from schemas.settings import Settings
from service.domain import model_sources


async def _dependency_ids(pool: asyncpg.Pool, refs: list[str]) -> list[UUID]:
    ids = []
    for ref in refs:
        dep = await models.find(pool, ref)
        if dep is None:
            raise Invalid(f"invalid request: dependency {ref!r} not found")
        ids.append(dep.id)
    return ids


async def register(pool: asyncpg.Pool, settings: Settings, owner_id: int, is_admin: bool,
                   body: ModelCreate) -> Model:
    """Create a model owned by `owner_id`, with its dependencies, if its source is allowed."""
    await model_sources.check(pool, settings, body.source, owner_id, is_admin)
    dep_ids = await _dependency_ids(pool, body.dependencies)
    try:
        async with pool.acquire() as conn, conn.transaction():
            model = await models.create(
                conn, model_id=uuid4(), owner_id=owner_id, name=body.name,
                source=body.source.model_dump(exclude_none=True),
                dimension=body.source.dimension, access_level=body.access_level,
                default_permission=body.default_permission)
            await dependencies.add(conn, model.id, dep_ids)
    except UniqueViolation:
        raise Conflict(f"you already have a model named {body.name!r}") from None
    return model


def shown_source(source: dict[str, Any], owner_view: bool) -> dict[str, Any]:
    """The source as a caller sees it: a host path in `location` (the model store's folder,
    an administrator's path) only for the model's owners (review L5); `package:` names stay."""
    location = source.get("location")
    if owner_view or not isinstance(location, str) or location.startswith("package:"):
        return source
    return {key: value for key, value in source.items() if key != "location"}


async def describe(pool: asyncpg.Pool, model: Model, owner_view: bool = True) -> ModelOut:
    """The model as shown; `owner_view` False for a caller below OWNER on it."""
    deps = await dependencies.identifiers_for_model(pool, model.id)
    return ModelOut(id=model.id, identifier=model.identifier, owner=model.owner,
                    name=model.name, source=shown_source(model.source, owner_view),
                    train_status=model.train_status,
                    access_level=model.access_level, default_permission=model.default_permission,
                    parent_id=model.parent_id, dependencies=deps, metadata=model.metadata,
                    created_at=model.created_at)


async def _user_id(pool: asyncpg.Pool, username: str) -> int:
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
    user_id = await _user_id(pool, username)
    if not await permissions.delete(pool, model.id, user_id):
        raise NotFound(f"{username!r} has no grant on {model.identifier}")
