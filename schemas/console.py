"""Shapes of the console's JSON routes and of the live change stream (issue 17)."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from schemas.tasks import TaskResponse

CHANGES_CHANNEL = "greenroom_changes"  # the Postgres NOTIFY channel of migration 003


class Change(BaseModel):
    """One row changed: sent to every stream whose caller may read the model.

    Carries ids and states only; the console fetches the rows through the JSON API.
    """

    kind: Literal["task", "deployment", "replica", "event"]
    model_id: UUID
    task_id: UUID | None = None
    status: str | None = None
    phase: str | None = None


class ReplicaOut(BaseModel):
    id: UUID
    generation: int
    state: str
    endpoint: str | None
    reported_status: str | None
    created_at: datetime
    updated_at: datetime


class GenerationOut(BaseModel):
    """One generation, as its replicas record it."""

    generation: int
    task_id: UUID | None
    replicas: int
    states: list[str]
    started_at: datetime
    last_change_at: datetime


class EventOut(BaseModel):
    id: int
    task_id: UUID | None
    generation: int | None
    level: str
    message: str
    created_at: datetime


class LatencyOut(BaseModel):
    """Latency through the gateways over their last report interval, in milliseconds."""

    requests: int = Field(description="requests finished in the window")
    mean_ms: float
    p50_ms: float | None = Field(default=None, description="from the gateways' histograms; "
                                 "None when a gateway reports no histogram")
    p99_ms: float | None = None


class DeploymentSummary(BaseModel):
    """A row of the deployments list. `env_names`: the deployment's env, values left out."""

    model_id: UUID
    model: str
    name: str
    status: str
    active_generation: int | None
    replicas_ready: int
    replicas_wanted: int
    autoscaling_enabled: bool
    autoscaling_min: int
    autoscaling_max: int | None
    memory: int | None
    env_names: list[str]
    permission: Literal["read", "write", "owner"]
    updated_at: datetime
    # Requests per second the gateways carried to its live replicas between their last two
    # reports that this API process read; None when no gateway has reported twice yet.
    requests_per_s: float | None = None
    # The latency of what the gateways finished for it over the same window; None when no
    # gateway has reported twice, or none finished a request for it in that window.
    latency: LatencyOut | None = None


class DeploymentDetail(BaseModel):
    deployment: DeploymentSummary
    replicas: list[ReplicaOut]
    generations: list[GenerationOut]
    events: list[EventOut]
    tasks: list[TaskResponse]


class TaskDetail(TaskResponse):
    """A task with its timestamps and its events, for the timeline."""

    model_id: UUID
    started_at: datetime | None
    finished_at: datetime | None
    now: datetime
    events: list[EventOut]
    permission: Literal["read", "write", "owner"]


class ReplicaLogOut(BaseModel):
    """One replica's recent output, as the worker that read it reports it."""

    replica_id: str
    generation: int | None = None
    state: str = ""
    stdout: str = ""
    stderr: str = ""


class StreamInfo(BaseModel):
    """Documentation shape of GET /api/v2/changes (the body is text/event-stream)."""

    event: str = "change"
    data: Change | dict[str, Any]
