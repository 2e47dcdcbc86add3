"""Where a model's weights may come from, by who registers it.

A replica loads whatever its `source.location` names from the worker's host, so a user
who could name any path could load another user's model, or any file the worker can read.
Users name `package:NAME` of an allowlisted package, or their own model's folder in the
model store (which an upload fills); administrators may name host paths. A Docker `image`
runs whatever its author put in it: administrators only, or one the settings allow.
"""

from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from db import models
from schemas.errors import Forbidden
from schemas.models import PACKAGE_PREFIX, ModelSource
from schemas.settings import Settings


def _refused(reason: str) -> Forbidden:
    """A location this caller may not name: a rule of who may name what (an administrator
    may), not of the document's shape, so 403 as for an image."""
    return Forbidden(f"not allowed: source.location {reason}",
                     [{"loc": ["body", "source", "location"], "msg": reason,
                       "type": "forbidden"}])


def store_root(settings: Settings) -> Path:
    return settings.model_store_dir.resolve()


def store_model_id(settings: Settings, location: str) -> UUID | None:
    """The model whose store folder holds `location`, or None if it lies outside the store."""
    path = Path(location)
    if not path.is_absolute():
        return None
    # resolve(): `..` and symlinks count where they lead, not where they start.
    try:
        relative = path.resolve().relative_to(store_root(settings))
    except ValueError:
        return None
    try:
        return UUID(relative.parts[0]) if relative.parts else None
    except ValueError:
        return None


async def check(pool: asyncpg.Pool, settings: Settings, source: ModelSource, user_id: int,
                is_admin: bool) -> None:
    """403 for an image or a location a non-admin may not choose."""
    if source.image and not is_admin and source.image not in settings.allowed_images:
        raise Forbidden(f"only administrators may choose a Docker image; "
                        f"allowed: {sorted(settings.allowed_images) or 'none'}")
    location = source.location
    # Every backend: the runtime mounts or loads `location` whatever the backend reads.
    if is_admin or not location:
        return
    if location.startswith(PACKAGE_PREFIX):
        package = location.removeprefix(PACKAGE_PREFIX)
        if package not in settings.allowed_model_packages:
            raise _refused(f"names package {package!r}, which is not allowed; allowed: "
                           f"{', '.join(sorted(settings.allowed_model_packages))}")
        return
    model_id = store_model_id(settings, location)
    if model_id is None:
        raise _refused("must be package:NAME of an allowed package or a folder in the model "
                       "store (upload a model with POST /api/v2/models/{model}/upload); host "
                       "paths are for administrators")
    owner = await models.get(pool, model_id)
    if owner is None or owner.owner_id != user_id:
        raise _refused("is the folder of a model you do not own")


async def check_stored(pool: asyncpg.Pool, settings: Settings, source: dict[str, Any],
                       user_id: int, is_admin: bool) -> None:
    """`check` for a source already stored (a copy of another model keeps it: seed 001's
    save), as if `user_id` registered it now."""
    await check(pool, settings, ModelSource.model_construct(
        backend=source.get("backend") or "sentence-transformers",
        location=source.get("location"), image=source.get("image")), user_id, is_admin)
