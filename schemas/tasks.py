"""Task API models (seed 002) and the deployment settings they carry."""

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import replica_env
from schemas.rollout import RolloutConfig

MAX_REPLICAS = 16
# The longest health-check deadline a deploy may ask for (`deploy_timeout_s`); a worker's
# job timeout covers it (worker/jobs.py `task_job_timeout_s`).
MAX_DEPLOY_TIMEOUT_S = 3600.0
# Autoscaler defaults (README "Autoscaling" says why each): one full batch of the model
# server's dynamic batcher in flight per replica, 70 % of it as the aim.
AUTOSCALE_DEFAULTS: dict[str, float] = {
    "target_concurrency": 32, "target_utilization": 0.7, "stable_window_s": 60,
    "panic_window_s": 6, "panic_threshold": 2.0, "scale_down_delay_s": 30,
    "max_scale_down_rate": 2.0, "scale_to_zero_grace_s": 30,
}


class TaskKind(StrEnum):
    deploy = "deploy"
    delete = "delete"
    scale = "scale"
    embed = "embed"  # a bulk embedding job (issue 30: schemas/embed_jobs.py)
    rollback = "rollback"


class TaskStatus(StrEnum):
    pending = "pending"
    processing = "processing"
    done = "done"
    failed = "failed"
    canceled = "canceled"
    refused = "refused"

    @property
    def terminal(self) -> bool:
        return self not in (TaskStatus.pending, TaskStatus.processing)


class DeploymentStatus(StrEnum):
    """A deployment's state (deployments.status); `degraded` still serves, short a replica."""

    not_started = "not_started"
    starting = "starting"
    in_progress = "in_progress"
    complete = "complete"
    degraded = "degraded"
    failed = "failed"
    stopped = "stopped"


class ReplicaState(StrEnum):
    """A replica's life (replicas.state): starting → ready → draining → stopped, or failed."""

    starting = "starting"
    ready = "ready"
    draining = "draining"
    stopped = "stopped"
    failed = "failed"


# A replica in these states may still run on its runtime.
LIVE_REPLICA_STATES = (ReplicaState.starting, ReplicaState.ready, ReplicaState.draining)
# A deployment in these states serves or is about to.
ACTIVE_DEPLOYMENT_STATES = (DeploymentStatus.starting, DeploymentStatus.in_progress,
                            DeploymentStatus.complete, DeploymentStatus.degraded)


class Phase(StrEnum):
    preparing = "preparing"  # an `auto` model's export and agreement check (worker/auto_backend.py)
    starting_replicas = "starting_replicas"
    health_checking = "health_checking"
    canary = "canary"  # config.rollout.strategy canary: the steps (worker/traffic_phase.py)
    shadow = "shadow"  # ... shadow: requests mirrored to the new generation
    switching = "switching"
    draining = "draining"
    removing = "removing"


class OnnxOptions(BaseModel):
    """`config.onnx`: the variant an `onnx`-backend model runs (model_server/config.py)."""

    model_config = ConfigDict(extra="forbid")

    quantize: Literal["none", "int8"] = Field(
        default="none", description="int8: dynamic int8 quantisation of the MatMuls")
    optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime graph optimisation level")
    isa: Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"] = Field(
        default="auto", description="int8 weight layout; auto reads the replica's CPU")
    min_mean_cosine: float | None = Field(
        default=None, ge=0, le=1, description="refuse a variant below this mean cosine to torch")
    min_top1_agreement: float | None = Field(
        default=None, ge=0, le=1, description="refuse a variant below this top-1 agreement")


def model_id_shaped(name: str) -> bool:
    """Whether a deployment name reads as a model id: `/serve/{id}` names the model, so such
    a name could take another model's traffic (review M10)."""
    try:
        UUID(name)
    except ValueError:
        return False
    return True


class DeploymentConfig(BaseModel):
    """Deployment settings (seed 001's deploy body, seed 002's `config`); all optional."""

    model_config = ConfigDict(extra="allow")

    deployment_name: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        validation_alias=AliasChoices("deployment_name", "name"),
    )
    memory: int | None = Field(default=None, ge=128, le=65536, description="MB per replica")
    cpus: float | None = Field(
        default=None, gt=0, le=256,
        description="CPUs per replica: its CPU limit on Docker and Swarm (default: the "
                    "host's share), and its compute threads on every runtime")
    autoscaling_enabled: bool = Field(
        default=False,
        description="scale between autoscaling_min and autoscaling_max by requests in flight"
                    " (docs/autoscaling.md); during a canary or shadow, each generation on "
                    "its own share")
    autoscaling_min: int = Field(
        default=1, ge=0, le=MAX_REPLICAS,
        description="fewest replicas; 0 (with autoscaling) scales an idle deployment to zero")
    autoscaling_max: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    # The autoscaler's knobs (worker/scaling/kpa.py, README "Autoscaling"); read only while
    # autoscaling_enabled. Defaults are for an embedding server batching up to 32 inputs.
    autoscaling_target_concurrency: float = Field(
        default=AUTOSCALE_DEFAULTS["target_concurrency"], gt=0, le=1024,
        description="requests in flight per replica the autoscaler aims at")
    autoscaling_target_utilization: float = Field(
        default=AUTOSCALE_DEFAULTS["target_utilization"], gt=0, le=1,
        description="share of the target to fill; the rest is headroom while replicas start")
    autoscaling_stable_window_s: float = Field(
        default=AUTOSCALE_DEFAULTS["stable_window_s"], ge=1, le=3600,
        description="in-flight average over this window decides (and scales down)")
    autoscaling_panic_window_s: float = Field(
        default=AUTOSCALE_DEFAULTS["panic_window_s"], ge=0.5, le=600,
        description="short window that scales up at once when load jumps")
    autoscaling_panic_threshold: float = Field(
        default=AUTOSCALE_DEFAULTS["panic_threshold"], ge=1, le=100,
        description="panic when the short window wants this many times the replicas ready")
    autoscaling_scale_down_delay_s: float = Field(
        default=AUTOSCALE_DEFAULTS["scale_down_delay_s"], ge=0, le=3600,
        description="scale down only to the highest count wanted over this long")
    autoscaling_max_scale_down_rate: float = Field(
        default=AUTOSCALE_DEFAULTS["max_scale_down_rate"], ge=1, le=100,
        description="one decision keeps at least ready/rate replicas")
    autoscaling_scale_to_zero_grace_s: float = Field(
        default=AUTOSCALE_DEFAULTS["scale_to_zero_grace_s"], ge=0, le=3600,
        description="with min 0: idle this long (no request in flight) before going to 0")
    env: dict[str, str] = Field(default_factory=dict,
                                json_schema_extra={"propertyNames": replica_env.NAME_SCHEMA})
    deploy_timeout_s: float | None = Field(
        default=None, gt=0, le=MAX_DEPLOY_TIMEOUT_S,
        description="health-check deadline for this rollout")
    onnx: OnnxOptions | None = Field(
        default=None,
        description="variant options for a model whose source.backend is onnx or auto")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="how a redeploy judges the new generation (the compatibility gate), how "
                    "traffic moves to it (green, canary or shadow), and how long the "
                    "previous generation stays warm for a rollback")

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        refused = {name: why for name, value in env.items()
                   if (why := replica_env.reserved(name) or replica_env.bad_value(value))}
        if refused:
            raise ValueError("env may not set " + "; ".join(
                f"{name} ({why})" for name, why in sorted(refused.items())))
        return env

    @model_validator(mode="after")
    def _check_bounds(self) -> "DeploymentConfig":
        if self.autoscaling_max is not None and self.autoscaling_max < self.autoscaling_min:
            raise ValueError("autoscaling_min must not exceed autoscaling_max")
        return self

    @property
    def autoscaling_ceiling(self) -> int:
        """The most replicas the autoscaler may run (no max given: the floor, at least 1)."""
        return self.autoscaling_max or max(1, self.autoscaling_min)

    @property
    def ignored_keys(self) -> list[str]:
        """Keys no field of the config has (seed 002 accepts them; the task names them)."""
        return sorted((self.model_extra or {}).keys())

    def unused_keys(self, kind: TaskKind, backend: str | None) -> list[str]:
        """The keys given (other than at their defaults) that a task of `kind` will not act
        on, unknown ones included: all
        of a delete's, all but `replicas` of a scale's, and for a deploy the autoscaler's
        knobs while autoscaling is off and `onnx` for a model whose backend is not onnx."""
        fields = type(self).model_fields
        given = {key for key in self.model_fields_set if key not in fields
                 or getattr(self, key) != fields[key].get_default(call_default_factory=True)}
        if kind == TaskKind.delete:
            unused = given
        elif kind == TaskKind.scale:
            unused = given - {"replicas"}
        else:
            unused = set(self.ignored_keys)
            if not self.autoscaling_enabled:
                unused |= {key for key in given if key.startswith("autoscaling_")} - {
                    "autoscaling_enabled", "autoscaling_min"}  # min also sets the count
            if self.onnx is not None and backend not in ("onnx", "auto"):
                unused.add("onnx")
        return sorted(unused)


def replica_count(config: DeploymentConfig, *, serving: int = 0, scale_to: int | None = None,
                  room: int | None = None, keep: int = 0) -> int:
    """How many replicas a deployment runs: decided here and nowhere else.

    What it asks for: a scale's `scale_to` (0: none); else the `replicas` its config names;
    else, redeployed while `serving` replicas serve, that count within [floor, ceiling] so
    the new generation keeps the capacity (worker/rollout.py); else its floor
    (`autoscaling_min`, at least 1). The floor is also the count when a deployment scaled
    to zero is redeployed. `room` is the most the owner's quota lets it run (None: no
    limit; a scale's, as a deploy past a quota is refused instead): the count is cut to
    it, but to no fewer than `keep` (what a scale keeps serving), unless it asked for 0.
    """
    if scale_to is not None:
        wanted = scale_to
    elif config.replicas:
        wanted = config.replicas
    else:
        floor = max(1, config.autoscaling_min)
        ceiling = config.autoscaling_ceiling if config.autoscaling_enabled else MAX_REPLICAS
        wanted = floor if serving < 1 else max(floor, min(serving, ceiling))
    if room is None or wanted == 0:
        return wanted
    return max(keep, min(wanted, room))


class ScaleRequest(BaseModel):
    """POST /api/v2/deploy/{model}/scale: the replica count for the serving generation."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=0, le=MAX_REPLICAS, description="replicas wanted (0: none)")


class _TaskBody(BaseModel):
    """What every task body of seed 002 carries: the caller's key and the model."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = Field(default=None, min_length=1, max_length=200,
                           description="Caller's idempotency key")
    embedding_model_id: str = Field(
        min_length=1, max_length=300,
        validation_alias=AliasChoices("embedding_model_id", "model_id"),
    )


class TaskRequest(_TaskBody):
    """Body of POST /deploy and POST /delete (seed 002)."""

    config: DeploymentConfig = Field(default_factory=DeploymentConfig)


class ScaleTaskConfig(BaseModel):
    """`config` of POST /scale: the replica count, and nothing else (any other key would
    have no effect, so it is refused)."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=1, le=MAX_REPLICAS, description="replicas wanted")


class ScaleTaskRequest(_TaskBody):
    """Body of POST /scale: seed 002's task body, its `config` the replica count only."""

    config: ScaleTaskConfig


class TaskResponse(BaseModel):
    """ModelDeploymentResponse / ModelDeletionResponse of seed 002."""

    task_id: UUID
    kind: TaskKind
    status: TaskStatus
    phase: Phase | None
    created_at: datetime
    updated_at: datetime
    embedding_model_id: str
    metadata: dict[str, Any]
    detail: str | None


class ErrorBody(BaseModel):
    """The one error shape on every surface: status code, message and detail."""

    status_code: int
    message: str
    detail: Any = None
