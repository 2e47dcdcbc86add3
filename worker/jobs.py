"""The arq job: claim a task, run it under a lease, record how it ended."""

import asyncio
import contextlib
from typing import Any
from uuid import UUID

import structlog
from arq import Retry

from db import admission, replicas, tasks
from db.errors import UniqueViolation
from schemas.tasks import TaskKind, TaskStatus
from worker import rollout
from worker.context import WorkerContext
from worker.lease import LeaseLost, held_lease
from worker.runtimes.base import RuntimeError_
from worker.scaling import scale_task

log = structlog.get_logger(__name__)
# Another task of the same model is processing: look again after this long.
BUSY_RETRY_S = 0.5
# The owner has `rollouts_per_user` rollouts running or ahead in line: look again after this.
TURN_RETRY_S = 0.5


async def run_task(ctx: dict[str, Any], task_id: str) -> str:
    """arq entry point; duplicate deliveries find nothing to claim and return at once."""
    app: WorkerContext = ctx["app"]
    try:
        task, wait_turn = await admission.claim(
            app.pool, UUID(task_id.split(":")[0]), app.worker_id, app.settings.lease_s,
            app.settings.rollouts_per_user)
    except UniqueViolation as exc:
        raise Retry(defer=BUSY_RETRY_S) from exc
    if wait_turn:  # its owner's earlier rollouts go first; the job slot goes to others
        # Still queued: the reconciler must not offer it again as if lost.
        await tasks.mark_enqueued(app.pool, UUID(task_id.split(":")[0]))
        raise Retry(defer=TURN_RETRY_S)
    if task is None:
        log.info("task_not_claimable", task=task_id)
        return "skipped"
    app.metrics.picked_up(task.created_at)
    structlog.contextvars.bind_contextvars(task_id=str(task.id), model_id=str(task.model_id))
    outcome = "interrupted"
    try:
        async with held_lease(app, task.id):
            await _dispatch(app, task)
        ended = await tasks.get(app.pool, task.id)
        outcome = str(ended.status) if ended is not None else "gone"
    except asyncio.CancelledError:
        await asyncio.shield(_hand_back(app, task))
        raise
    except LeaseLost:
        log.error("task_abandoned_lease_lost", task=task_id)
        outcome = "lease_lost"
        return "lease_lost"
    except Exception as exc:
        log.exception("task_crashed", task=task_id)
        await tasks.finish(app.pool, task.id, app.worker_id, TaskStatus.failed,
                           f"internal error: {type(exc).__name__}: {exc}")
        outcome = "crashed"
        return "crashed"
    finally:
        app.metrics.tasks.labels(str(task.kind), outcome).inc()
        structlog.contextvars.unbind_contextvars("task_id", "model_id")
    return "ran"


async def _hand_back(app: WorkerContext, task: tasks.Task) -> None:
    current = await tasks.get(app.pool, task.id)
    outcome = await rollout.hand_back(app, task, current.phase if current else None)
    log.warning("task_interrupted", task=str(task.id), outcome=outcome)


async def replica_logs(ctx: dict[str, Any], model_id: str, tail: int = 100) -> list[dict[str, Any]]:
    """The last `tail` lines of each live replica of a model; a gone replica gives empty text."""
    app: WorkerContext = ctx["app"]
    found = []
    for replica in await replicas.list_for_model(app.pool, UUID(model_id)):
        stdout, stderr = "", ""
        if replica.runtime_ref:
            with contextlib.suppress(RuntimeError_):
                stdout, stderr = await app.runtime.logs(replica.runtime_ref, tail)
        found.append({"replica_id": str(replica.id), "generation": replica.generation,
                      "state": replica.state, "stdout": stdout, "stderr": stderr})
    return found


async def _dispatch(app: WorkerContext, task: tasks.Task) -> None:
    if task.kind == TaskKind.deploy:
        await rollout.deploy(app, task)
    elif task.kind == TaskKind.delete:
        await rollout.delete(app, task)
    elif task.kind == TaskKind.scale:
        await scale_task.scale(app, task)
    else:
        await tasks.finish(app.pool, task.id, app.worker_id, TaskStatus.refused,
                           f"task kind {task.kind!r} is not supported by this worker")
