"""A replica's life on this worker: start it, find a task's starting ones, stop and remove.

Every start records the replica's row before the runtime starts it (so a crash cannot
leave a replica nobody knows of), then its runtime reference and endpoint; a start the
runtime refuses leaves the row `failed`. The rollout, the scale task, the repair of a
crashed replica and the reconciler all start and remove replicas through here.
"""

from uuid import UUID, uuid4

import structlog

from db import deployments, replicas
from db.models import Model
from schemas import replica_auth
from schemas import secrets as deployment_secrets
from schemas.quotas import replica_memory_mb
from schemas.tasks import DeploymentConfig, ReplicaState
from schemas.tokens import issue_job_token
from worker import auto_backend
from worker.context import WorkerContext
from worker.generations import pinned_model
from worker.onnx_variant import replica_source
from worker.runtimes.base import ReplicaSpec, RuntimeFailure, StartedReplica

log = structlog.get_logger(__name__)


class SecretsUnreadable(Exception):
    """The deployment's secrets cannot be decrypted with this worker's key."""


async def generation_env(ctx: WorkerContext, model: Model, generation: int,
                         config: DeploymentConfig) -> dict[str, str]:
    """The config's env (opened: sealed at accept), the model's decrypted secrets, and this
    generation's job token and gateway secret."""
    if ctx.settings.secret_key is None:
        return dict(config.env)
    key = ctx.settings.secret_key.get_secret_value()
    try:
        env = deployment_secrets.open_env(key, config.env)  # sealed at accept (review L5)
    except deployment_secrets.SecretsUnreadable as exc:
        raise SecretsUnreadable(f"{exc} (was GREENROOM_SECRET_KEY changed?)") from None
    blob = await deployments.get_secrets(ctx.pool, model.id)
    if blob is not None:
        try:
            env |= deployment_secrets.as_env(deployment_secrets.decrypt(key, blob))
        except deployment_secrets.SecretsUnreadable as exc:
            raise SecretsUnreadable(f"{exc} (was GREENROOM_SECRET_KEY changed?)") from None
    env["GREENROOM_MODEL_ID"] = str(model.id)
    env["GREENROOM_JOB_TOKEN"] = issue_job_token(key, model.id, generation)
    env[replica_auth.ENV] = replica_auth.generation_secret(key, model.id, generation)
    return env


def gateway_headers(ctx: WorkerContext, model_id: UUID, generation: int) -> dict[str, str]:
    """What a gateway sends a replica of this generation to be answered (none without a key)."""
    if ctx.settings.secret_key is None:
        return {}
    secret = replica_auth.generation_secret(ctx.settings.secret_key.get_secret_value(),
                                            model_id, generation)
    return {replica_auth.HEADER: secret}


def placed_memory_mb(ctx: WorkerContext, model: Model, config: DeploymentConfig,
                     generation: int | None = None) -> int:
    """The memory each replica of this deployment's `generation` is counted with (quotas,
    capacity)."""
    return replica_memory_mb(config.memory,
                             auto_backend.effective_backend(ctx.settings, model, generation),
                             ctx.settings.replica_memory_mb, ctx.settings.onnx_replica_memory_mb)


async def start(ctx: WorkerContext, model: Model, generation: int, task_id: UUID | None,
                config: DeploymentConfig, env: dict[str, str], memory_mb: int,
                replaces: str | None = None,
                awaiting_health: bool = False) -> tuple[UUID, StartedReplica]:
    """Record, start and record the endpoint of one replica (state `starting`); its id and
    what the runtime started. `replaces`: the runtime_ref of the crashed replica this one
    replaces (a runtime that restarts replicas itself takes that restart over).
    `awaiting_health`: a candidate's replica added in its traffic phase, not routed until
    `replicas.set_healthy` (worker/scaling/phase_scaling.py).

    Raises the runtime's `RuntimeFailure` after marking the row `failed` with its reason.
    Every start loads the revision its generation pinned (worker/generations.py).
    """
    model = await pinned_model(ctx, model, generation)
    spec = ReplicaSpec(
        replica_id=uuid4(), model_id=model.id, model_identifier=model.identifier,
        generation=generation, task_id=task_id,
        source=replica_source(ctx.settings, auto_backend.resolved(
            ctx.settings, model.id, model.source, generation), config, model.id),
        # What quotas and capacity count is what the runtime enforces.
        memory_mb=memory_mb, memory_requested=config.memory is not None, env=dict(env),
        cpus=config.cpus,
        replaces=replaces,
    )
    await replicas.insert(ctx.pool, replica_id=spec.replica_id, model_id=model.id,
                          generation=generation, task_id=task_id, runtime=ctx.runtime.name,
                          memory_mb=memory_mb, awaiting_health=awaiting_health)
    try:
        replica = await ctx.runtime.start(spec)
    except RuntimeFailure as exc:
        await replicas.set_state(ctx.pool, [spec.replica_id], ReplicaState.failed, str(exc))
        raise
    await replicas.set_started(ctx.pool, spec.replica_id, replica.runtime_ref, replica.endpoint)
    return spec.replica_id, replica


async def starting_of_task(ctx: WorkerContext, model_id: UUID, task_id: UUID) -> list[UUID]:
    """The replicas `task_id` started that are not serving yet (state `starting`)."""
    return [r.id for r in await replicas.list_for_model(ctx.pool, model_id)
            if r.task_id == task_id and r.state == ReplicaState.starting]


async def remove(ctx: WorkerContext, replica_ids: list[UUID], state: ReplicaState,
                 grace_s: float) -> None:
    """Stop and remove replicas, then record them as `state` (stopped or failed)."""
    rows = await replicas.get_many(ctx.pool, replica_ids)
    await stop_and_remove(ctx, [row.runtime_ref for row in rows if row.runtime_ref], grace_s)
    await replicas.set_state(ctx.pool, replica_ids, state)


async def stop_and_remove(ctx: WorkerContext, runtime_refs: list[str], grace_s: float) -> None:
    """Stop replicas on the runtime (`grace_s` to finish what they are doing), then remove
    them, together: the swarm runtime removes a whole generation as its service."""
    if not runtime_refs:
        return
    try:
        await ctx.runtime.remove_many(runtime_refs, grace_s)
    except RuntimeFailure as exc:
        log.warning("replica_remove_failed", refs=runtime_refs, error=str(exc))
