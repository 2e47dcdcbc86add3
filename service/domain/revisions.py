"""Model revisions and generations, as the API reads and makes them (issue 26).

A change of a model's source (`PATCH /api/v2/models/{model}`) records a new immutable
revision, as an upload does (service/domain/model_upload.py); the next deploy pins it, and
the generations serving now keep theirs. Rollback is accepted here as a task like a deploy.
"""

from typing import Any

import asyncpg
from arq.connections import ArqRedis

from db import deployments, generations, models, revisions
from db.generations import Generation
from db.models import Model
from db.revisions import Revision
from db.tasks import Task
from schemas.auth import Principal
from schemas.errors import Conflict, NotFound
from schemas.revisions import ModelUpdate, PinnedGeneration, RevisionOut, source_digest
from schemas.rollout import RollbackRequest
from schemas.settings import Settings
from schemas.task_payloads import RollbackPayload
from schemas.tasks import DeploymentConfig, TaskKind, TaskRequest
from service.domain import catalog, model_sources, task_requests


def revision_out(revision: Revision, owner_view: bool) -> RevisionOut:
    return RevisionOut(id=revision.id, number=revision.number, created=revision.created_at,
                       origin=revision.origin,  # type: ignore[arg-type]
                       digest=revision.digest, size_bytes=revision.size_bytes,
                       source=catalog.shown_source(revision.source, owner_view),
                       files_removed=revision.files_removed_at is not None)


async def list_revisions(pool: asyncpg.Pool, model: Model, owner_view: bool) -> list[RevisionOut]:
    return [revision_out(r, owner_view) for r in await revisions.list_for_model(pool, model.id)]


def _state(generation: Generation, active: int | None, previous: int | None) -> str:
    if generation.generation == active:
        return "serving"
    if generation.generation == previous:
        return "warm"
    return "retired" if generation.served_at is not None else "never_served"


async def list_generations(pool: asyncpg.Pool, model: Model) -> list[PinnedGeneration]:
    """The model's generations, newest first, each with its pinned revision and state."""
    deployment = await deployments.get(pool, model.id)
    active = deployment.active_generation if deployment else None
    previous = deployment.previous_generation if deployment else None
    return [PinnedGeneration(generation=g.generation, revision=f"r{g.revision}", digest=g.digest,
                          created=g.created_at, served_at=g.served_at,
                          rollback_of=g.rollback_of,
                          state=_state(g, active, previous),  # type: ignore[arg-type]
                          config=_shown_config(g.config))
            for g in await generations.list_for_model(pool, model.id)]


def _shown_config(config: dict[str, Any]) -> dict[str, Any]:
    """A generation's config without env values (sealed at rest; names only)."""
    shown = {k: v for k, v in config.items() if v is not None and k != "env"}
    if config.get("env"):
        shown["env"] = sorted(config["env"])
    return shown


async def check_room(pool: asyncpg.Pool, model: Model) -> None:
    """409 once the model has `MAX_REVISIONS` revisions."""
    if await revisions.count(pool, model.id) >= revisions.MAX_REVISIONS:
        raise Conflict(f"model {model.identifier} has {revisions.MAX_REVISIONS:,} revisions, "
                       "the most one model may have; register a new model")


async def update(pool: asyncpg.Pool, settings: Settings, principal: Principal, model: Model,
                 body: ModelUpdate) -> Model:
    """Apply a PATCH: a new source becomes a new revision (the same source: no change)."""
    if body.source is None:
        return model
    if model.train_status == "in_progress":
        raise Conflict(f"model {model.identifier} is being uploaded; change its source after")
    owner_id = principal.user_id if principal.user_id is not None else model.owner_id
    await model_sources.check(pool, settings, body.source, owner_id, principal.is_admin)
    source = body.source.model_dump(exclude_none=True)
    if source != model.source:
        await check_room(pool, model)
        await revisions.for_source(pool, model.id, source, source_digest(source))
        await models.update_source(pool, model.id, source)
    found = await models.get(pool, model.id)
    assert found is not None
    return found


async def accept_rollback(pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, model: Model,
                          body: RollbackRequest | None, user_id: int | None,
                          idempotency_key: str | None) -> tuple[Task, bool]:
    """A pending rollback task; 409 when nothing serves or the generation asked for is the
    serving one, 404 when the model has no such generation."""
    deployment = await deployments.get(pool, model.id)
    if deployment is None or deployment.active_generation is None:
        raise Conflict(f"model {model.identifier} has no serving generation to roll back",
                       {"embedding_model_id": model.identifier})
    wanted = body.generation if body is not None else None
    target = wanted or await generations.served_before(pool, model.id,
                                                       deployment.active_generation)
    if target is None:
        raise Conflict(f"no generation of {model.identifier} served before generation "
                       f"{deployment.active_generation}")
    if target == deployment.active_generation:
        raise Conflict(f"generation {target} is already serving")
    if await generations.get(pool, model.id, target) is None:
        raise NotFound(f"model {model.identifier} has no generation {target} to roll back to",
                       {"generation": target})
    req = TaskRequest(embedding_model_id=model.identifier, config=DeploymentConfig())
    payload = RollbackPayload(embedding_model_id=model.identifier, generation=wanted)
    return await task_requests.accept(pool, redis, TaskKind.rollback, req, idempotency_key,
                                      user_id, model, settings=settings, payload=payload)
