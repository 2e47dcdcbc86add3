"""Per-user quotas (issue 19): limits, use, and the one check the API, the worker and the
autoscaler share.

A quota belongs to a model's owner (whoever asks for the deploy). Use counts what the
owner's models hold: models registered, deployments serving, replicas and their memory.
A replica's memory is its deploy's `memory` setting, or an assumed figure when none is set
(`Settings.replica_memory_mb`; the dependency-free hashing test backend is assumed small,
and an `auto` model that runs the worker's ONNX export `Settings.onnx_replica_memory_mb`).
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field

from schemas.settings import Settings
from schemas.tasks import DeploymentConfig, replica_count

QUOTA_NAMES = ("models", "deployments", "replicas", "memory_mb", "store_mb")
# What the hashing backend (a feature-hashing test embedder, no model weights) takes.
HASHING_MEMORY_MB = 128
AUTO_BACKEND = "auto"
_UNITS = {"models": "models", "deployments": "deployments", "replicas": "replicas",
          "memory_mb": "MB of replica memory", "store_mb": "MB of uploaded models"}


@dataclass(frozen=True, slots=True)
class Use:
    """Amounts of each quota: held, asked for, or allowed."""

    models: int = 0
    deployments: int = 0
    replicas: int = 0
    memory_mb: int = 0
    store_mb: int = 0

    def __add__(self, other: "Use") -> "Use":
        return Use(*(getattr(self, n) + getattr(other, n) for n in QUOTA_NAMES))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def times(self, n: int) -> "Use":
        """What `n` holders of this much hold together."""
        return Use(*(getattr(self, name) * n for name in QUOTA_NAMES))


class QuotaExceeded(Exception):
    """A request would take the owner past a quota; the message names the figures."""

    def __init__(self, quota: str, current: int, requested: int, limit: int) -> None:
        self.quota, self.current, self.requested, self.limit = quota, current, requested, limit
        unit = _UNITS[quota]
        super().__init__(
            f"{quota} quota exceeded: {current:,} {unit} in use, this request needs "
            f"{requested:,} more, the limit is {limit:,}")

    @property
    def figures(self) -> dict[str, Any]:
        return {"quota": self.quota, "current": self.current, "requested": self.requested,
                "limit": self.limit}


class QuotaLimits(BaseModel):
    """Body of PUT /api/v2/users/{user}/quotas: each omitted or null limit is the default."""

    models: int | None = Field(default=None, ge=0, le=1_000_000)
    deployments: int | None = Field(default=None, ge=0, le=1_000_000)
    replicas: int | None = Field(default=None, ge=0, le=1_000_000)
    memory_mb: int | None = Field(default=None, ge=0, le=1_000_000_000)
    store_mb: int | None = Field(default=None, ge=0, le=1_000_000_000,
                                 description="MB the user's uploaded models may hold")


class QuotaFigures(BaseModel):
    models: int
    deployments: int
    replicas: int
    memory_mb: int
    store_mb: int


class UsageResponse(BaseModel):
    """GET /api/v2/users/me/usage and PUT /api/v2/users/{user}/quotas."""

    username: str
    unlimited: bool = Field(description="administrators are not held to quotas")
    usage: QuotaFigures
    limits: QuotaFigures
    overrides: QuotaLimits


def replica_memory_mb(memory: int | None, backend: str | None, assumed_mb: int,
                      onnx_mb: int | None = None) -> int:
    """The memory one replica is counted with: `assumed_mb` for torch (or an `onnx`
    replica, which may export with torch itself), `onnx_mb` for an `auto` one (it loads the
    worker's export; worker/auto_backend.py names a fallen-back one torch)."""
    if memory:
        return memory
    if backend == "hashing":
        return HASHING_MEMORY_MB
    if backend == AUTO_BACKEND and onnx_mb:
        return onnx_mb
    return assumed_mb


def demand(config: DeploymentConfig, backend: str | None, assumed_mb: int,
           onnx_mb: int | None = None) -> Use:
    """What a deployment with `config` holds once it serves."""
    count = replica_count(config)
    return Use(deployments=1, replicas=count,
               memory_mb=count * replica_memory_mb(config.memory, backend, assumed_mb,
                                                   onnx_mb))


def total(uses: Iterable[Use]) -> Use:
    result = Use()
    for use in uses:
        result = result + use
    return result


def check(limits: Use, current: Use, requested: Use) -> None:
    """Raise QuotaExceeded for the first quota `current + requested` would pass."""
    for name in QUOTA_NAMES:
        wanted = getattr(requested, name)
        held, limit = getattr(current, name), getattr(limits, name)
        if wanted > 0 and held + wanted > limit:
            raise QuotaExceeded(name, held, wanted, limit)


def replica_room(limits: Use, others: Use, memory_per_replica: int) -> int:
    """How many replicas one deployment has room for beside the owner's others (the
    autoscaler (issue 14) and a scale cut their count to it: `tasks.replica_count`)."""
    by_count = limits.replicas - others.replicas
    by_memory = (limits.memory_mb - others.memory_mb) // max(1, memory_per_replica)
    return max(0, min(by_count, by_memory))


def claimed(task_kind: str | None, task_config: dict[str, Any] | None,
            deployed_config: dict[str, Any] | None, backend: str | None,
            assumed_mb: int, onnx_mb: int | None = None) -> Use:
    """What one model holds or will hold: its newest open task decides (a deploy replaces
    the serving generation, a delete frees it), else what serves."""
    if task_kind == "delete":
        return Use()
    if task_kind == "deploy":
        config = task_config or {}
    elif deployed_config is not None:
        config = deployed_config
    else:
        return Use()
    return demand(DeploymentConfig.model_validate(config), backend, assumed_mb, onnx_mb)


def defaults(settings: Settings) -> Use:
    """The limits of a user without overrides."""
    return Use(models=settings.quota_models, deployments=settings.quota_deployments,
               replicas=settings.quota_replicas, memory_mb=settings.quota_memory_mb,
               store_mb=settings.quota_store_mb)


def limits_with(base: Use, stored: dict[str, int | None]) -> Use:
    """`base` with the stored overrides (`max_<quota>` columns; None: not overridden)."""
    values = {n: stored.get(f"max_{n}") for n in QUOTA_NAMES}
    return Use(**(base.as_dict() | {n: v for n, v in values.items() if v is not None}))
