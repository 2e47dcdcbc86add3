"""A rollback (issue 26): back to an earlier generation's pinned revision and config.

Inside the warm window (`config.rollout.keep_previous_s` after a flip) the generation
asked for still runs, ready but not routed: the rollback is a route flip, one statement
and one publish, and the generation that served until now stays warm in its place (a
roll forward is a rollback too). Past the window, or to an older generation, it is a
green deploy of a new generation pinned to the target's revision and config
(worker/rollout.py `deploy_generation`).
"""

import time
from datetime import UTC, datetime

import structlog

from db import deployments, events, generations, models, tasks
from db.pool import transaction
from db.tasks import Task
from schemas.rollout import keep_previous_s
from schemas.task_payloads import RollbackPayload
from schemas.tasks import DeploymentConfig, TaskStatus
from worker.context import WorkerContext
from worker.publish import publish_routes
from worker.rollout import deploy_generation

log = structlog.get_logger(__name__)


async def _refuse(ctx: WorkerContext, task: Task, reason: str) -> None:
    await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.failed, reason)


def _since_claim_ms(task: Task) -> float | None:
    if task.started_at is None:
        return None
    return round((datetime.now(UTC) - task.started_at).total_seconds() * 1000, 1)


async def rollback(ctx: WorkerContext, task: Task) -> None:
    started = time.perf_counter()
    payload = RollbackPayload.model_validate(task.request)
    model = await models.get(ctx.pool, task.model_id)
    assert model is not None  # tasks reference models; a deleted model cascades its tasks
    deployment = await deployments.get(ctx.pool, model.id)
    if deployment is None or deployment.active_generation is None:
        await _refuse(ctx, task, f"model {model.identifier} has no serving generation to "
                                 "roll back")
        return
    active = deployment.active_generation
    target = payload.generation or await generations.served_before(ctx.pool, model.id, active)
    if target is None:
        await _refuse(ctx, task, f"no generation served before generation {active}")
        return
    if target == active:
        await _refuse(ctx, task, f"generation {target} is already serving")
        return
    pinned = await generations.get(ctx.pool, model.id, target)
    if pinned is None:
        await _refuse(ctx, task, f"generation {target} has no pinned revision (it never "
                                 "existed, or it started before revisions were recorded)")
        return
    config = DeploymentConfig.model_validate(pinned.config)
    keep = keep_previous_s(config.rollout, ctx.settings.rollout_keep_previous_s)
    async with transaction(ctx.pool) as conn:
        flipped_from = await deployments.flip_to_warm(conn, model.id, target, pinned.config,
                                                      keep)
    if flipped_from is not None:
        await publish_routes(ctx, model.id)
        flip_ms = round((time.perf_counter() - started) * 1000, 1)
        await events.add(ctx.pool, model.id, "info",
                         f"rolled back to warm generation {target} (revision r"
                         f"{pinned.revision}); generation {flipped_from} stays warm for "
                         f"{keep:g} s", task_id=task.id, generation=target)
        await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.done, None, {
            "mode": "flip", "generation": target, "from_generation": flipped_from,
            "revision": f"r{pinned.revision}", "revision_digest": pinned.digest,
            "flip_ms": flip_ms, "claim_to_flipped_ms": _since_claim_ms(task),
            "timings": {"flip": flip_ms / 1000}})
        log.info("rollback_flipped", model=str(model.id), generation=target, ms=flip_ms)
        return
    if pinned.files_removed_at is not None:
        await _refuse(ctx, task, f"generation {target}'s revision r{pinned.revision} no longer "
                                 "has its files (removed once no rollback target used them)")
        return
    await events.add(ctx.pool, model.id, "info",
                     f"generation {target} is not warm: rolling back by a green deploy of "
                     f"its revision r{pinned.revision} and config", task_id=task.id)
    await deploy_generation(ctx, task, model, config, pinned.revision, rollback_of=target)
