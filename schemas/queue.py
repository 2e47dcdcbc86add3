"""Names the API, the workers and the gateways agree on in Redis (queue, channels, keys)."""

QUEUE_NAME = "greenroom:queue"
JOB_RUN_TASK = "run_task"
# Published with a model id whenever a deployment's serving generation changes.
ROUTES_CHANNEL = "greenroom:routes"
# greenroom:gateway:<id> → a schemas.gateway.GatewayReport as JSON, about every second
GATEWAY_KEY_PREFIX = "greenroom:gateway:"
GATEWAY_TTL_S = 10
# Published with a gateway id when that gateway's report shows a jump in a model's load (its
# in-flight count grew sharply since its last report, or a request is held for a deployment
# at zero): the autoscalers read the reports at once instead of at their next tick.
LOAD_CHANNEL = "greenroom:load"
# Published whenever a key is revoked or a grant or access level changes: gateways and the
# API drop their cached access decisions at once (they also expire within a second).
AUTH_CHANNEL = "greenroom:auth"
# greenroom:autoscaler:<model id> → the worker id deciding that deployment's scale (a
# lease: SET NX PX, renewed each tick; it expires by itself when its worker dies).
AUTOSCALER_LEASE_PREFIX = "greenroom:autoscaler:"
# greenroom:worker:<id> → JSON heartbeat of a live worker
WORKER_KEY_PREFIX = "greenroom:worker:"
WORKER_TTL_S = 15


def retry_job_id(task_id: str, attempt: int) -> str:
    """Job id of a retried task: arq refuses a job id it still holds from the dead attempt."""
    return f"{task_id}:retry{attempt}"
# arq job run by a worker for the API: (model_id: str, tail: int) →
# [{"replica_id", "generation", "stdout", "stderr"}]; needs a kept result (keep_result ≥ 10).
JOB_REPLICA_LOGS = "replica_logs"
