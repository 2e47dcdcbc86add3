"""Names the API, the workers and the gateways agree on in Redis (queue, jobs, channels,
keys), the messages published on the channels, and how arq jobs and results are encoded."""

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

QUEUE_NAME = "greenroom:queue"
# arq job: (job id) → runs the task of that id (a retry's id names the same task).
JOB_RUN_TASK = "run_task"
# arq job run by a worker for the API: (model_id: str, tail: int) →
# [{"replica_id", "generation", "stdout", "stderr"}], as job `logs_job_id(model, tail)`:
# identical calls share one job, and its result, kept LOGS_RESULT_KEEP_S, answers them all.
JOB_REPLICA_LOGS = "replica_logs"
LOGS_RESULT_KEEP_S = 5
# greenroom:rate:<what>:<who> → calls counted in the current window (service/domain/rate_limit)
RATE_KEY_PREFIX = "greenroom:rate:"
# A `RoutesChanged` whenever a deployment's serving generation or replicas change.
ROUTES_CHANNEL = "greenroom:routes"
# greenroom:gateway:<id> → a schemas.gateway.GatewayReport as JSON, about every second
GATEWAY_KEY_PREFIX = "greenroom:gateway:"
GATEWAY_TTL_S = 10
# Published with a gateway id when that gateway's report shows a jump in a model's load (its
# in-flight count grew sharply since its last report, or a request is held for a deployment
# at zero): the autoscalers read the reports at once instead of at their next tick.
LOAD_CHANNEL = "greenroom:load"
# An `AccessChanged` whenever a key is revoked, a grant changes or a user's tokens are
# revoked (logout, password change, disable): gateways and the API
# drop their cached access decisions at once (they also expire within a second).
AUTH_CHANNEL = "greenroom:auth"
# greenroom:autoscaler:<model id> → the worker id deciding that deployment's scale (a
# lease: SET NX PX, renewed each tick; it expires by itself when its worker dies).
AUTOSCALER_LEASE_PREFIX = "greenroom:autoscaler:"
# greenroom:worker:<id> → a `WorkerHeartbeat` of a live worker (GET /readyz counts them)
WORKER_KEY_PREFIX = "greenroom:worker:"
WORKER_TTL_S = 15


def retry_job_id(task_id: str, attempt: int) -> str:
    """Job id of a retried task: arq refuses a job id it still holds from the dead attempt."""
    return f"{task_id}:retry{attempt}"


def logs_job_id(model_id: UUID | str, tail: int) -> str:
    """The one job id of a logs request: a second identical call finds and waits on it."""
    return f"logs:{model_id}:{tail}"


# arq's job_serializer / job_deserializer, for every pool, worker and job that touches the
# queue: JSON, never arq's default pickle (unpickling runs code chosen by whoever can write
# to Redis). A job's arguments and results are strings, numbers, lists and dicts; a failed
# job's exception is stored as its text, so the API reads it without unpickling anything.
def encode_job(data: dict[str, Any]) -> bytes:
    return json.dumps(data, default=_exception_text, separators=(",", ":")).encode()


def decode_job(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("an arq job or result is a JSON object")
    return data


def _exception_text(value: object) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data


@dataclass(frozen=True, slots=True)
class RoutesChanged:
    """On ROUTES_CHANNEL: the model's routes changed; gateways reload them from Postgres.

    The payload is the model id as text (gateways reload on any message, so one that
    cannot be parsed still works as a nudge)."""

    model_id: UUID

    def encode(self) -> str:
        return str(self.model_id)

    @classmethod
    def decode(cls, data: bytes | str) -> "RoutesChanged":
        return cls(UUID(_text(data)))


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat:
    """Written by each worker's reconciler under WORKER_KEY_PREFIX + worker id, with a TTL."""

    worker: str
    runtime: str
    at: float  # Unix time

    def encode(self) -> str:
        return json.dumps({"worker": self.worker, "runtime": self.runtime, "at": self.at})

    @classmethod
    def decode(cls, data: bytes | str) -> "WorkerHeartbeat":
        fields = json.loads(data)
        return cls(str(fields["worker"]), str(fields["runtime"]), float(fields["at"]))


class AccessChange(StrEnum):
    api_key = "api_key"  # a key was revoked
    grant = "grant"  # a grant was made, changed or revoked
    user = "user"  # a user's tokens were revoked (logout, password change) or disabled


@dataclass(frozen=True, slots=True)
class AccessChanged:
    """On AUTH_CHANNEL: what changed; every receiver drops all its cached decisions."""

    what: AccessChange

    def encode(self) -> str:
        return self.what.value

    @classmethod
    def decode(cls, data: bytes | str) -> "AccessChanged":
        return cls(AccessChange(_text(data)))
