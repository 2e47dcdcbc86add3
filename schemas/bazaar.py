"""Request and response shapes of the Model Bazaar surfaces: seed 000 (v1) and seed 001 (v2)."""

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.tasks import MAX_REPLICAS, DeploymentConfig

# Seed 001's status words.
DeployStatus = Literal["not_started", "starting", "in_progress", "complete", "failed", "stopped"]
TrainStatus = Literal["not_started", "in_progress", "complete", "failed"]
MODEL_REF = Field(min_length=1, max_length=300, description="model uuid or owner/name")
T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    """Seed 000's response envelope."""

    status_code: int
    message: str
    data: T


# ---- seed 001 (v2) ----

class DeployRequest(DeploymentConfig):
    """POST /api/v2/deploy/{model_id}: every field optional (seed 001)."""

    model_config = ConfigDict(extra="forbid")


class StatusResponse(BaseModel):
    status: DeployStatus
    errors: list[str]
    warnings: list[str]
    replicas_current: int = Field(default=0, description="ready replicas serving now")
    replicas_desired: int = Field(default=0, description="replicas the last scale asked for")
    generation: int | None = Field(default=None, description="the serving generation")
    revision: str | None = Field(default=None,
                                 description="the revision the serving generation pinned")
    warm_generation: int | None = Field(
        default=None, description="the previous generation, kept warm for a rollback")


class ReplicaLogs(BaseModel):
    stdout: str
    stderr: str


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


class SaveResponse(BaseModel):
    model_id: str
    update_token: str


class UpdateStatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: DeployStatus
    metadata: dict[str, Any] | None = None


class TrainUpdateStatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: TrainStatus
    metadata: dict[str, Any] | None = None


class LogRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["info", "warning", "error"]
    message: str = Field(min_length=1, max_length=10_000)


class Empty(BaseModel):
    """Seed 001's `{}` answer."""


# ---- seed 000 (v1) ----

class PermissionsData(BaseModel):
    read: bool
    write: bool
    exp: datetime | None
    override: bool


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_identifier: str = MODEL_REF
    memory: int | None = Field(default=None, ge=128, le=65536)
    autoscaling_enabled: bool = False
    autoscaler_max_count: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    genai_key: str | None = Field(default=None, min_length=1, max_length=4096)
    deployment_name: str | None = None


class RunData(BaseModel):
    status: Literal["queued"]
    model_identifier: str
    model_id: str


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_identifier: str = MODEL_REF


class StopData(BaseModel):
    status: Literal["queued"]
    model_id: str


class StatusData(BaseModel):
    deploy_status: DeployStatus
    messages: list[str]
    model_id: str
    replicas_current: int = 0
    replicas_desired: int = 0


class UpvoteOut(BaseModel):
    query: str
    reference_text: str | None = None
    reference_id: int | str | None = None
    timestamp: str


class AssociateOut(BaseModel):
    source: str
    target: str
    timestamp: str


class FeedbacksData(BaseModel):
    upvote: list[UpvoteOut]
    associate: list[AssociateOut]


# ---- feedback (gateway) ----

class FeedbackRequest(BaseModel):
    """POST /serve/{name}/feedback: one upvote, implicit upvote or association."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["upvote", "associate", "implicit_upvote"]
    query: str | None = Field(default=None, max_length=10_000)
    reference_text: str | None = Field(default=None, max_length=10_000)
    reference_id: int | str | None = None
    source: str | None = Field(default=None, max_length=10_000)
    target: str | None = Field(default=None, max_length=10_000)

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude={"event"}, exclude_none=True)


class FeedbackRecorded(BaseModel):
    id: int
    event: str
    timestamp: str
