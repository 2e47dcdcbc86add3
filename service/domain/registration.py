"""Registering models (the registry's HTTP surface and permissions come with accounts)."""

from uuid import uuid4

import asyncpg

from db import models, users
from db.models import Model
from schemas.models import ModelSource


async def register(pool: asyncpg.Pool, owner: str, name: str, source: ModelSource,
                   access_level: str = "private") -> Model:
    """The model `owner/name`, created with `source` if it does not exist yet."""
    user = await users.ensure(pool, owner)
    existing = await models.find(pool, f"{owner}/{name}")
    if existing is not None:
        return existing
    return await models.create(pool, model_id=uuid4(), owner_id=user.id, name=name,
                               source=source.model_dump(exclude_none=True),
                               dimension=source.dimension, access_level=access_level)
