"""The green rollout and deletion, for one claimed task.

A deploy starts a new generation of replicas beside the serving one, waits until every
one is healthy, switches the deployment's route to it in one transaction, tells the
gateways, drains the old generation and removes it. Any failure before the switch
removes the new replicas and leaves the old generation serving. A delete takes the
route away, drains and removes every replica. Replicas start and stop through
worker/replica_lifecycle.py.
"""

import dataclasses
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog

from db import deployments, events, models, replicas, tasks, traffic
from db.errors import UniqueViolation
from db.models import Model
from db.pool import transaction
from db.tasks import Task
from schemas.log_tail import with_log_tail
from schemas.quotas import QuotaExceeded
from schemas.rollout import keep_previous_s
from schemas.task_payloads import DeployPayload
from schemas.tasks import (
    DeploymentConfig,
    Phase,
    ReplicaState,
    TaskKind,
    TaskStatus,
    model_id_shaped,
    replica_count,
)
from worker import auto_backend, compatibility, generations, replica_lifecycle, traffic_phase
from worker.admission import capacity, quotas
from worker.context import WorkerContext
from worker.drain import min_wait_for, wait_drained
from worker.health import ReplicaFailed, wait_all_ready
from worker.onnx_variant import record_agreement
from worker.publish import publish_routes
from worker.runtimes.base import RuntimeFailure, StartedReplica

log = structlog.get_logger(__name__)
LOG_TAIL_LINES = 20


class RolloutFailed(Exception):
    """The new generation could not be brought up; the message becomes the task's detail."""


@dataclass
class Progress:
    """Phase bookkeeping for one task: records phases and their timings on the task row."""

    ctx: WorkerContext
    task: Task
    timings: dict[str, float] = field(default_factory=dict)
    _phase: str | None = None
    _since: float = field(default_factory=time.monotonic)

    async def enter(self, phase: Phase | None, **metadata: Any) -> None:
        now = time.monotonic()
        if self._phase is not None:
            # A phase entered again (a scale starting replicas in turns) adds up.
            self.timings[self._phase] = round(self.timings.get(self._phase, 0.0)
                                              + now - self._since, 3)
            self.ctx.metrics.phase_duration.labels(self.task.kind, self._phase).observe(
                now - self._since)
        self._phase, self._since = (phase.value if phase else None), now
        await tasks.set_phase(self.ctx.pool, self.task.id, self.ctx.worker_id, self._phase,
                              {**metadata, "timings": self.timings})

    async def note(self, **metadata: Any) -> None:
        """Merge metadata into the task without changing phase (replicas ready so far)."""
        await tasks.set_phase(self.ctx.pool, self.task.id, self.ctx.worker_id, self._phase,
                              metadata)

    async def event(self, level: str, message: str, generation: int | None = None) -> None:
        await events.add(self.ctx.pool, self.task.model_id, level, message,
                         task_id=self.task.id, generation=generation)


def default_deployment_name(model: Model) -> str:
    """A URL-safe name from the model's name; never one shaped like a model id (review M10:
    a model named after another's id would route that id to itself)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", model.name.lower()).strip("-")[:63]
    if model_id_shaped(slug):
        return f"model-{slug}"[:63].rstrip("-")
    return slug or f"model-{str(model.id)[:8]}"


async def _start_replicas(ctx: WorkerContext, task: Task, model: Model, generation: int,
                          config: DeploymentConfig) -> list[StartedReplica]:
    try:
        env = await replica_lifecycle.generation_env(ctx, model, generation, config)
    except replica_lifecycle.SecretsUnreadable as exc:
        raise RolloutFailed(str(exc)) from None
    memory_mb = replica_lifecycle.placed_memory_mb(ctx, model, config, generation)
    started: list[StartedReplica] = []
    for _ in range(replica_count(config)):
        try:
            _, replica = await replica_lifecycle.start(ctx, model, generation, task.id, config,
                                                       env, memory_mb)
        except RuntimeFailure as exc:
            raise RolloutFailed(f"could not start replica: {exc}") from exc
        started.append(replica)
    return started


async def _log_tail(ctx: WorkerContext, runtime_ref: str) -> str:
    try:
        stdout, stderr = await ctx.runtime.logs(runtime_ref, LOG_TAIL_LINES)
    except RuntimeFailure:
        return ""
    return (stderr or stdout).strip()


async def bring_up(ctx: WorkerContext, progress: Progress, model: Model, generation: int,
                   config: DeploymentConfig,
                   on_ready: Callable[[StartedReplica], Awaitable[None]] | None = None,
                   ) -> list[StartedReplica]:
    """Start the replicas and wait until all are healthy; `on_ready` runs with each one
    as it becomes healthy (a scale routes to it then)."""
    await progress.enter(Phase.starting_replicas, generation=generation,
                         replicas_wanted=replica_count(config), replicas_ready=0)
    needed = replica_count(config) * replica_lifecycle.placed_memory_mb(ctx, model, config,
                                                                        generation)
    try:
        async with capacity.placing(ctx, needed):
            started = await _start_replicas(ctx, progress.task, model, generation, config)
    except capacity.NoCapacity as exc:
        raise RolloutFailed(f"not enough capacity on this worker: {exc}") from None
    await progress.enter(Phase.health_checking, generation=generation)
    ready = 0

    async def one_ready(replica: StartedReplica) -> None:
        nonlocal ready
        ready += 1
        await progress.note(replicas_ready=ready)
        if on_ready is not None:
            await on_ready(replica)

    try:
        timeout = config.deploy_timeout_s or ctx.settings.deploy_timeout_s
        await wait_all_ready(ctx.runtime, ctx.http, started, timeout, one_ready)
    except* ReplicaFailed as group:
        first = group.exceptions[0]
        assert isinstance(first, ReplicaFailed)
        tail = await _log_tail(ctx, first.runtime_ref)
        raise RolloutFailed(with_log_tail(f"{first}", tail)) from None
    await record_agreement(ctx.pool, ctx.http, model.id,
                           auto_backend.resolved(ctx.settings, model.id, model.source,
                                                 generation),
                           started[0].endpoint,
                           generation, replica_lifecycle.gateway_headers(ctx, model.id, generation))
    return started


async def _fail(ctx: WorkerContext, progress: Progress, generation: int, reason: str,
                status: TaskStatus = TaskStatus.failed,
                metadata: dict[str, Any] | None = None) -> None:
    task = progress.task
    # A failure after a canary or shadow routed to the candidate (the name taken at the
    # switch, whose rollback restored the split; an unexpected error mid-phase): the
    # serving generation takes all traffic back before the candidate goes (review 4).
    await traffic_phase.abandon(ctx, task.model_id)
    green = [r.id for r in await replicas.list_for_model(ctx.pool, task.model_id)
             if r.generation == generation]
    await replica_lifecycle.remove(ctx, green, ReplicaState.failed, grace_s=0)
    deployment_status = await deployments.restore_after_failure(ctx.pool, task.model_id)
    await progress.event("error", f"generation {generation} failed: {reason}", generation)
    await tasks.finish(ctx.pool, task.id, ctx.worker_id, status, reason,
                       {"generation": generation, "deployment_status": deployment_status,
                        "timings": progress.timings, **(metadata or {})})
    log.warning("rollout_failed", task=str(task.id), generation=generation, reason=reason)


async def _switch(ctx: WorkerContext, model: Model, generation: int, name: str,
                  config: DeploymentConfig) -> list[UUID]:
    async with transaction(ctx.pool) as conn:
        old = await deployments.switch(conn, model.id, generation, name,
                                       config.model_dump(mode="json"),
                                       name_hold_s=ctx.settings.deployment_name_hold_s,
                                       keep_previous_s=keep_previous_s(
                                           config.rollout, ctx.settings.rollout_keep_previous_s))
        await traffic.clear_split(conn, model.id)  # a canary's or shadow's split ends here
    await publish_routes(ctx, model.id)
    return old


async def _record_count(ctx: WorkerContext, model_id: UUID, generation: int,
                        started: int) -> int:
    """The switched generation's count: a canary or shadow may have autoscaled the
    candidate on its share (worker/scaling/phase_scaling.py); quotas count what serves."""
    running = await replicas.count_serving(ctx.pool, model_id)
    if running != started:
        await deployments.set_scaled_count(ctx.pool, model_id, generation, running or None)
    return running


async def drain_and_remove(ctx: WorkerContext, progress: Progress, generation: int | None,
                            old: list[UUID]) -> None:
    await progress.enter(Phase.draining)
    drained = await wait_drained(ctx.redis, progress.task.model_id, generation, old,
                                 ctx.settings.drain_timeout_s,
                                 min_wait_for(ctx.settings.routes_poll_s))
    if not drained:
        await progress.event("warning", "drain timed out; removing replicas with requests "
                             "in flight", generation)
    await progress.enter(Phase.removing)
    await replica_lifecycle.remove(ctx, old, ReplicaState.stopped, ctx.settings.stop_grace_s)


async def _name_refused(ctx: WorkerContext, task: Task, model: Model, name: str) -> bool:
    """A task accepted before its name was refused (shaped like a model id, or held for the
    model that had it): it fails, saying why."""
    if model_id_shaped(name):
        reason = f"deployment name {name!r} is shaped like a model id"
    elif await deployments.name_held_by_another(ctx.pool, name, model.id):
        reason = f"deployment name {name!r} is held for the model that had it"
    else:
        return False
    await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.failed, reason)
    return True


async def deploy(ctx: WorkerContext, task: Task,
                 scaling_of: traffic_phase.ScalingOf | None = None) -> None:
    """Bring up a new generation beside the old, switch, drain and remove the old;
    `scaling_of` makes a canary's or shadow's autoscaling (worker/jobs.py passes it)."""
    model = await models.get(ctx.pool, task.model_id)
    assert model is not None  # tasks reference models; a deleted model cascades its tasks
    await deploy_generation(ctx, task, model, DeployPayload.model_validate(task.request).config,
                            scaling_of=scaling_of)


async def deploy_generation(ctx: WorkerContext, task: Task, model: Model,
                            config: DeploymentConfig, revision: int | None = None,
                            rollback_of: int | None = None,
                            scaling_of: traffic_phase.ScalingOf | None = None) -> None:
    """A green deploy of `model` with `config`, its new generation pinned to `revision`
    (None: the model's current source); a rollback past its warm window passes the target
    generation's pinned revision and config, and `rollback_of` names that generation."""
    count = replica_count(config, serving=await replicas.count_serving(ctx.pool, model.id))
    if count != replica_count(config):  # a redeploy keeps the count serving now
        config = config.model_copy(update={"replicas": count})
    name = config.deployment_name or default_deployment_name(model)
    if await _name_refused(ctx, task, model, name):
        return
    try:
        await quotas.check_rollout(ctx, model, config)
    except QuotaExceeded as exc:
        await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.refused, str(exc),
                           {"quota": exc.figures})
        return
    try:
        _, generation = await deployments.begin_generation(ctx.pool, model.id, name)
    except UniqueViolation:
        await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.failed,
                           f"deployment name {name!r} is taken by another model")
        return
    pinned = await generations.pin(ctx, model, generation, config, revision, rollback_of)
    model = dataclasses.replace(model, source=pinned.source)
    progress = Progress(ctx, task)
    await progress.note(generation=generation, revision=pinned.id)
    await progress.event("info", f"starting generation {generation} (revision {pinned.id})",
                         generation)
    # A rollback asks for the target generation's vectors by name: the gate records how
    # they compare with the serving ones but does not refuse them, and traffic moves at once.
    judged = config if rollback_of is None else _as_rollback(config)
    try:
        await auto_backend.prepare(ctx, progress, model, config, generation)
        if model.source.get("backend") == auto_backend.AUTO_BACKEND:
            # The quota again, at the memory this generation's replicas are placed with
            # now that its backend is decided (an export that fell back runs torch: review 6).
            await quotas.check_rollout(ctx, model, config, generation)
        started = await bring_up(ctx, progress, model, generation, config)
        await compatibility.gate(ctx, progress, model, generation, started, judged)
        handed = await traffic_phase.hand_over(ctx, progress, model.id, generation, judged,
                                               scaling_of)
        if handed is None:
            return  # a canary step failed: the candidate is gone, the task failed
        await progress.enter(Phase.switching, generation=generation)
        old = await _switch(ctx, model, generation, name, config)
    except QuotaExceeded as exc:
        await _fail(ctx, progress, generation, str(exc), TaskStatus.refused,
                    {"quota": exc.figures})
        return
    except (RolloutFailed, UniqueViolation, compatibility.Refused) as exc:
        reason = (f"deployment name {name!r} is taken by another model"
                  if isinstance(exc, UniqueViolation) else str(exc))
        await _fail(ctx, progress, generation, reason)
        return
    except Exception as exc:  # a database or Redis error mid-rollout (review 4b)
        log.exception("rollout_crashed", task=str(task.id), generation=generation)
        await _fail(ctx, progress, generation,
                    f"internal error: {type(exc).__name__}: {exc}")
        return
    await progress.event("info", f"generation {generation} is serving", generation)
    running = await _record_count(ctx, model.id, generation, len(started))
    await drain_and_remove(ctx, progress, generation, old)
    await progress.enter(None)
    await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.done, None, {
        "generation": generation, "deployment_name": name, "revision": pinned.id,
        "revision_digest": pinned.digest,
        **({"rollback_of": rollback_of} if rollback_of is not None else {}),
        "endpoint": f"/serve/{name}/embed", "replicas": [r.endpoint for r in started],
        "replicas_current": running, "replicas_desired": replica_count(config),
        "timings": progress.timings, **handed,
    })
    log.info("rollout_done", task=str(task.id), model=str(model.id), generation=generation)


def _as_rollback(config: DeploymentConfig) -> DeploymentConfig:
    """A rollback's own rollout: the gate in `new-space` (it records, never refuses), green."""
    rollout = config.rollout.model_copy(update={"compatibility": "new-space",
                                                "strategy": "green"})
    return config.model_copy(update={"rollout": rollout})


async def _switched(ctx: WorkerContext, task: Task) -> bool:
    """Whether a task draining has passed its switch: a deploy's (or rollback's) new
    generation serves. A rejected canary drains its candidate before any switch (review 3);
    a delete's drain always follows taking the route away."""
    if task.kind not in (TaskKind.deploy, TaskKind.rollback):
        return True
    current = await tasks.get(ctx.pool, task.id)
    generation = (current.metadata or {}).get("generation") if current else None
    deployment = await deployments.get(ctx.pool, task.model_id)
    return (generation is not None and deployment is not None
            and deployment.active_generation == generation)


async def _rejected_step(ctx: WorkerContext, task: Task) -> str | None:
    """Why the task's canary was rejected, if a step of it failed (metadata.rollout)."""
    current = await tasks.get(ctx.pool, task.id)
    rollout = (current.metadata or {}).get("rollout") if current else None
    steps = rollout.get("steps") if isinstance(rollout, dict) else None
    if not steps or not isinstance(steps[-1], dict) or steps[-1].get("verdict") != "fail":
        return None
    failed = steps[-1]
    return (f"canary step {failed.get('weight')} % failed: "
            + "; ".join(str(r) for r in failed.get("reasons") or []))


async def hand_back(ctx: WorkerContext, task: Task, phase: str | None, reason: str) -> str:
    """The worker is stopping mid-task: leave the model as it was, or finish what is safe.

    Past the switch the new generation already serves; the drain is left to the
    reconciler and the task is done. Before it (a rejected canary drains its candidate
    before any switch), a split goes, the green replicas are removed and the task goes
    back to pending for another worker, or fails once it has been run `max_attempts` times
    (`reason` says why each run ended), or at once when its canary was rejected. A scale
    always goes back: its retry drains and stops the replicas it left draining.
    """
    if phase in (Phase.draining, Phase.removing) and task.kind != TaskKind.scale \
            and await _switched(ctx, task):
        await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.done, None,
                           {"note": "worker stopped while draining; reconciler removes the rest"})
        return "done"
    # A canary or shadow (or a switch that did not commit) leaves a split: all traffic
    # back to the serving generation, the candidate drained, before it goes.
    await traffic_phase.abandon(ctx, task.model_id)
    mine = await replica_lifecycle.starting_of_task(ctx, task.model_id, task.id)
    await replica_lifecycle.remove(ctx, mine, ReplicaState.failed, grace_s=0)
    if task.kind in (TaskKind.deploy, TaskKind.rollback):
        await deployments.restore_after_failure(ctx.pool, task.model_id)
    rejected = await _rejected_step(ctx, task)
    if rejected is not None:  # the canary was judged already: no retry judges it again
        await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.failed,
                           f"{rejected}; the worker stopped while removing the candidate")
        return "failed"
    detail = (f"interrupted {task.attempts} time(s), the last because {reason}; giving up "
              f"after {ctx.settings.max_attempts} attempts (GREENROOM_MAX_ATTEMPTS)")
    return await tasks.hand_back(ctx.pool, task.id, ctx.worker_id, ctx.settings.max_attempts,
                                 detail) or "lost"


async def delete(ctx: WorkerContext, task: Task) -> None:
    """Take the route away, drain, and stop and remove every replica of the model."""
    progress = Progress(ctx, task)
    await progress.enter(Phase.switching)
    async with transaction(ctx.pool) as conn:
        old = await deployments.stop(conn, task.model_id)
    await publish_routes(ctx, task.model_id)
    leftovers = [r.id for r in await replicas.list_for_model(ctx.pool, task.model_id)]
    await drain_and_remove(ctx, progress, None, sorted(set(old) | set(leftovers)))
    await progress.event("info", "deployment stopped")
    await progress.enter(None)
    await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.done, None,
                       {"removed_replicas": len(set(old) | set(leftovers)),
                        "timings": progress.timings})
