"""Task API models (seed 002) and the deployment settings they carry."""

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import replica_env

MAX_REPLICAS = 16


class TaskKind(StrEnum):
    deploy = "deploy"
    delete = "delete"
    scale = "scale"


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


class Phase(StrEnum):
    starting_replicas = "starting_replicas"
    health_checking = "health_checking"
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


class DeploymentConfig(BaseModel):
    """Deployment settings (seed 001's deploy body, seed 002's `config`); all optional."""

    model_config = ConfigDict(extra="allow")

    deployment_name: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        validation_alias=AliasChoices("deployment_name", "name"),
    )
    memory: int | None = Field(default=None, ge=128, le=65536, description="MB per replica")
    autoscaling_enabled: bool = False
    autoscaling_min: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    autoscaling_max: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    env: dict[str, str] = Field(default_factory=dict)
    deploy_timeout_s: float | None = Field(
        default=None, gt=0, le=3600, description="health-check deadline for this rollout")
    onnx: OnnxOptions | None = Field(
        default=None, description="variant options for a model whose source.backend is onnx")

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
    def replica_count(self) -> int:
        return self.replicas or self.autoscaling_min

    @property
    def ignored_keys(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class TaskRequest(BaseModel):
    """Body of POST /deploy and POST /delete (seed 002)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = Field(default=None, min_length=1, max_length=200,
                           description="Caller's idempotency key")
    embedding_model_id: str = Field(
        min_length=1, max_length=300,
        validation_alias=AliasChoices("embedding_model_id", "model_id"),
    )
    config: DeploymentConfig = Field(default_factory=DeploymentConfig)


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
    """The one error shape on every surface (DESIGN.md §10)."""

    status_code: int
    message: str
    detail: Any = None
