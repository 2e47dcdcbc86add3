"""Bulk embedding jobs (issue 30): the job as the API shows it, and where its files live.

A job is a task of kind `embed` (schemas/task_payloads.py `EmbedPayload`) and a row of
`embed_jobs` (db/embed_jobs.py). Its input (JSONL, one `{"id", "text"}` per line) and its
results (JSONL, one `{"id", "embedding"}` or `{"id", "error"}` per input, in input order)
live in `<state_dir>/embed-jobs/<job id>/`, a folder only Greenroom's user may read.
"""

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from uuid import UUID

from pydantic import BaseModel, Field

from schemas.lanes import Lane
from schemas.settings import Settings
from schemas.tasks import TaskStatus

# Each request of a job carries PRIORITY_HEADER to its replicas: the batch lane (issue 29).
BATCH_PRIORITY: Lane = "batch"
INPUT_FILE = "input.jsonl"
RESULTS_FILE = "results.jsonl"
# A job's input travels with this media type.
NDJSON = "application/x-ndjson"


class JobStatus(StrEnum):
    pending = "pending"
    processing = "processing"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


def job_status(task_status: str) -> JobStatus:
    """The job's status from its task's (a refused task is a failed job)."""
    status = TaskStatus(task_status)
    if status is TaskStatus.canceled:
        return JobStatus.cancelled
    if status is TaskStatus.refused:
        return JobStatus.failed
    return JobStatus(status.value)


class JobCounts(BaseModel):
    total: int = Field(description="inputs in the file (one a line)")
    done: int = Field(description="inputs embedded")
    failed: int = Field(description="inputs recorded as failed, each with its reason")


class EmbedJob(BaseModel):
    """A bulk embedding job."""

    id: UUID
    task_id: UUID = Field(description="the task that runs it (the same id)")
    object: str = "embed_job"
    model: str = Field(description="the model as the job's caller named it")
    generation: int = Field(description="the deployment generation every vector comes from")
    dimensions: int | None = None
    normalize: bool = True
    status: JobStatus
    counts: JobCounts
    tokens: int = Field(description="tokens embedded so far")
    rate: float | None = Field(default=None, description="inputs per second in this run")
    eta_s: float | None = Field(default=None, description="seconds left at that rate")
    input_bytes: int
    results_bytes: int
    detail: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(
        default=None, description="when its files and the job are removed (once ended)")


def jobs_root(settings: Settings) -> Path:
    return settings.state_dir / "embed-jobs"


def job_dir(settings: Settings, job_id: UUID) -> Path:
    return jobs_root(settings) / str(job_id)
