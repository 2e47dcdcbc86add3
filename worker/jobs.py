"""The arq jobs: claim a task, run it under a lease, record how it ended; replica logs."""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast
from uuid import UUID

import structlog
from arq import Retry
from arq.typing import WorkerCoroutine

from db import deployments, replicas, tasks
from db.errors import UniqueViolation
from schemas import replica_auth, task_payloads, tracing
from schemas import secrets as deployment_secrets
from schemas.rollout import MAX_TRAFFIC_PHASE_S
from schemas.settings import Settings
from schemas.tasks import MAX_DEPLOY_TIMEOUT_S, TaskKind, TaskStatus
from worker import compatibility, embed_job, rollback, rollout
from worker.context import CONTEXT_KEY, WorkerContext
from worker.lease import LeaseLost, held_lease
from worker.log_redaction import redact, secret_values
from worker.runtimes.base import RuntimeFailure
from worker.scaling import scale_task
from worker.scaling.phase_scaling import PhaseScaling

log = structlog.get_logger(__name__)
# Another task of the same model is processing: look again after this long.
BUSY_RETRY_S = 0.5
# The owner has `rollouts_per_user` rollouts running or ahead in line: look again after this.
TURN_RETRY_S = 0.5
# A task job's time beyond its deploy deadline and drain: starting and stopping replicas.
JOB_TIMEOUT_MARGIN_S = 120.0


def task_job_timeout_s(settings: Settings) -> float:
    """arq's limit on one run of a task job. It covers an `auto` model's preparing phase, the
    longest deploy deadline a task may ask for, the compatibility gate's bound, the longest
    canary or shadow phase (MAX_TRAFFIC_PHASE_S), its drain, and a margin for starting and
    stopping replicas, so a deploy within its own deadline is never cut short; a job cut
    short anyway is handed back, which counts as an attempt (`max_attempts`)."""
    if settings.job_timeout_s is not None:
        return settings.job_timeout_s
    return (settings.onnx_prepare_timeout_s
            + max(MAX_DEPLOY_TIMEOUT_S, settings.deploy_timeout_s) + settings.drain_timeout_s
            + compatibility.EMBED_TIMEOUT_S + MAX_TRAFFIC_PHASE_S + JOB_TIMEOUT_MARGIN_S)


def arq_job(fn: Callable[..., Awaitable[Any]]) -> WorkerCoroutine:
    """`fn(ctx: WorkerContext, *args)` as the arq job `(arq_ctx, *args)` arq calls."""
    async def job(arq_ctx: dict[str, Any], *args: Any) -> Any:
        return await fn(arq_ctx[CONTEXT_KEY], *args)

    job.__qualname__ = fn.__qualname__
    return cast(WorkerCoroutine, job)


async def run_task(ctx: WorkerContext, task_id: str) -> str:
    """Claim and run one task; duplicate deliveries find nothing to claim and return at once."""
    try:
        task, wait_turn = await tasks.claim(
            ctx.pool, UUID(task_id.split(":")[0]), ctx.worker_id, ctx.settings.lease_s,
            ctx.settings.rollouts_per_user)
    except UniqueViolation as exc:
        raise Retry(defer=BUSY_RETRY_S) from exc
    if wait_turn:  # its owner's earlier rollouts go first; the job slot goes to others
        # Still queued: the reconciler must not offer it again as if lost.
        await tasks.mark_enqueued(ctx.pool, UUID(task_id.split(":")[0]))
        raise Retry(defer=TURN_RETRY_S)
    if task is None:
        log.info("task_not_claimable", task=task_id)
        return "skipped"
    ctx.metrics.picked_up(task.created_at)
    began = time.monotonic()
    structlog.contextvars.bind_contextvars(task_id=str(task.id), model_id=str(task.model_id))
    outcome = "interrupted"
    try:
        async with held_lease(ctx, task.id):
            with tracing.span("greenroom-worker", f"{task.kind} task",
                              **{"greenroom.task_id": str(task.id),
                                 "greenroom.model_id": str(task.model_id)}):
                await _dispatch(ctx, task)
        ended = await tasks.get(ctx.pool, task.id)
        outcome = str(ended.status) if ended is not None else "gone"
    except asyncio.CancelledError:
        await asyncio.shield(_hand_back(ctx, task, time.monotonic() - began))
        raise
    except LeaseLost:
        log.error("task_abandoned_lease_lost", task=task_id)
        outcome = "lease_lost"
        return "lease_lost"
    except Exception as exc:
        log.exception("task_crashed", task=task_id)
        await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.failed,
                           f"internal error: {type(exc).__name__}: {exc}")
        outcome = "crashed"
        return "crashed"
    finally:
        ctx.metrics.tasks.labels(str(task.kind), outcome).inc()
        structlog.contextvars.unbind_contextvars("task_id", "model_id")
    return "ran"


def _interruption(ctx: WorkerContext, ran_s: float) -> str:
    """Why a job was cancelled: arq's job timeout, or the worker stopping."""
    limit = task_job_timeout_s(ctx.settings)
    if ran_s >= limit - 1:
        return (f"the job ran past the worker's job timeout of {limit:g} s "
                "(GREENROOM_JOB_TIMEOUT_S)")
    return "the worker stopped"


async def _hand_back(ctx: WorkerContext, task: tasks.Task, ran_s: float) -> None:
    current = await tasks.get(ctx.pool, task.id)
    reason = _interruption(ctx, ran_s)
    if task.kind == TaskKind.embed:  # no replicas of its own: back to pending, resumed later
        outcome = await embed_job.hand_back(ctx, task, reason)
    else:
        outcome = await rollout.hand_back(ctx, task, current.phase if current else None,
                                          reason)
    log.warning("task_interrupted", task=str(task.id), outcome=outcome, reason=reason)


async def replica_logs(ctx: WorkerContext, model_id: str,
                       tail: int = 100) -> list[dict[str, Any]]:
    """The last `tail` lines of each live replica of a model, its secrets taken out
    (worker/log_redaction.py); a gone replica gives empty text."""
    found = []
    live = await replicas.list_for_model(ctx.pool, UUID(model_id))
    hidden = await _secrets_of(ctx, UUID(model_id), live)
    for replica in live:
        stdout, stderr = "", ""
        if replica.runtime_ref:
            with contextlib.suppress(RuntimeFailure):
                stdout, stderr = await ctx.runtime.logs(replica.runtime_ref, tail)
        found.append({"replica_id": str(replica.id), "generation": replica.generation,
                      "state": replica.state, "stdout": redact(stdout, hidden),
                      "stderr": redact(stderr, hidden)})
    return found


async def _secrets_of(ctx: WorkerContext, model_id: UUID,
                      live: list[replicas.Replica]) -> list[str]:
    """What to take out of a model's logs: its secret values, the longer env values of its
    deployment's config and of the tasks that started its live replicas (a generation still
    starting runs with its task's env, not yet the deployment's), opened (sealed at
    accept), and each live generation's gateway secret."""
    if ctx.settings.secret_key is None:
        return []
    key = ctx.settings.secret_key.get_secret_value()
    deployment = await deployments.get(ctx.pool, model_id)
    # Read leniently: a row a later rule would refuse still names values to take out.
    envs = [task_payloads.config_env(deployment.config) if deployment else {}]
    for task_id in {r.task_id for r in live if r.task_id is not None}:
        task = await tasks.get(ctx.pool, task_id)
        # a scale's replicas run with the deployment's env, read above
        if task is not None:
            envs.append(task_payloads.sealed_env(task.kind, task.request))
    env_values: list[str] = []
    for sealed in envs:
        with contextlib.suppress(deployment_secrets.SecretsUnreadable):
            opened = deployment_secrets.open_env(key, {str(k): str(v) for k, v in sealed.items()})
            env_values += opened.values()
    secrets: dict[str, str] = {}
    blob = await deployments.get_secrets(ctx.pool, model_id)
    if blob is not None:
        with contextlib.suppress(deployment_secrets.SecretsUnreadable):
            secrets = deployment_secrets.decrypt(key, blob)
    gateway = [replica_auth.generation_secret(key, model_id, generation)
               for generation in {r.generation for r in live}]
    return [*secret_values(secrets, env_values), *gateway]


async def _dispatch(ctx: WorkerContext, task: tasks.Task) -> None:
    if task.kind == TaskKind.deploy:
        # A canary's or shadow's autoscaling, passed in: scaling imports rollout.
        await rollout.deploy(ctx, task, PhaseScaling.of)
    elif task.kind == TaskKind.delete:
        await rollout.delete(ctx, task)
    elif task.kind == TaskKind.scale:
        await scale_task.scale(ctx, task)
    elif task.kind == TaskKind.embed:
        # a slice of the job, well within this job's timeout; the rest in runs of their own
        await embed_job.run(ctx, task, min(ctx.settings.embed_slice_s,
                                           task_job_timeout_s(ctx.settings) / 2))
    elif task.kind == TaskKind.rollback:
        await rollback.rollback(ctx, task)
    else:
        await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.refused,
                           f"task kind {task.kind!r} is not supported by this worker")
