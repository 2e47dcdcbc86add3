"""How many replicas a redeploy starts: the count serving now, so it keeps its capacity."""

from uuid import UUID

from db import deployments, replicas
from db.pool import Executor
from db.tasks import Task
from schemas.tasks import MAX_REPLICAS, DeploymentConfig, ReplicaState


async def serving_count(db: Executor, model_id: UUID) -> int:
    """Ready replicas of the model's serving generation (0 when none serves)."""
    deployment = await deployments.get(db, model_id)
    if deployment is None or deployment.active_generation is None:
        return 0
    rows = await replicas.list_for_model(db, model_id)
    return sum(1 for r in rows
               if r.generation == deployment.active_generation and r.state == ReplicaState.ready)


def carried_over(config: DeploymentConfig, task: Task, current: int) -> DeploymentConfig:
    """The new generation starts at `current` replicas (clamped to [min, max]) unless the
    deploy names `replicas` itself; a deployment scaled to zero starts at its floor."""
    if (task.request.get("config") or {}).get("replicas") is not None or current < 1:
        return config
    floor = max(1, config.autoscaling_min)
    ceiling = config.autoscaling_ceiling if config.autoscaling_enabled else MAX_REPLICAS
    count = max(floor, min(current, ceiling))
    if count == config.replica_count:
        return config
    return config.model_copy(update={"replicas": count})
