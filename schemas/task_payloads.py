"""The task as it crosses from the API to the worker: one typed payload per task kind.

The API (service/domain/task_requests.py, service/domain/scaling.py) and the autoscaler
(worker/scaling/autoscaler.py) write one of these into `tasks.request` (JSON in Postgres;
the arq job carries only the task id); the worker parses it back with `read` and reads
fields, never keys of a dict.

Tasks stored before these models (issue 24) still parse: they carried the body's `id`
(the idempotency key, which the task's `idempotency_key` column holds), a delete carried
the config it was given (none of it acts: the task's `ignored_config_keys` names it), and
a scale's count sat in `replicas`, in `config.replicas`, or in both (then `replicas`).
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.tasks import MAX_REPLICAS, DeploymentConfig, TaskKind


def _without_legacy(data: Any, *dropped: str) -> Any:
    """`data` without keys that tasks stored before issue 24 carried and nothing reads."""
    if not isinstance(data, dict):
        return data
    return {key: value for key, value in data.items() if key not in dropped}


class TaskTarget(BaseModel):
    """The part of every payload a task's answer shows: the model as its caller named it.
    The polling hot path reads only this (a whole payload costs ten times as much)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    embedding_model_id: str | None = Field(
        default=None, min_length=1, max_length=300,
        description="the model reference the caller gave (the task answers with it); "
                    "absent in some old rows, which answer with the model's id")


class _Payload(TaskTarget):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _legacy_id(cls, data: Any) -> Any:
        return _without_legacy(data, "id")

    def stored(self) -> dict[str, Any]:
        """The JSON `tasks.request` holds: only what was set, so a deploy's config keeps
        telling the keys the caller gave from the defaults (`unused_keys`)."""
        return self.model_dump(mode="json", exclude_unset=True)


class DeployPayload(_Payload):
    """A deploy: the model and the deployment settings asked for (env values sealed)."""

    config: DeploymentConfig = Field(default_factory=DeploymentConfig)


class DeletePayload(_Payload):
    """A delete: the model, nothing else."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_config(cls, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data.get("config", {}), dict):
            raise ValueError("config must be an object")
        return _without_legacy(data, "config")


class ScalePayload(_Payload):
    """A scale: the replica count the serving generation is brought to."""

    replicas: int = Field(ge=0, le=MAX_REPLICAS, description="replicas wanted (0: none)")
    autoscaler: bool = Field(
        default=False, description="asked by the autoscaler, not the owner: a quota clamps "
                                   "its count instead of refusing the task")

    @model_validator(mode="before")
    @classmethod
    def _one_count(cls, data: Any) -> Any:
        """Old rows: the count in `replicas`, else in `config.replicas`; `config` goes."""
        if not isinstance(data, dict) or "config" not in data:
            return data
        config = data["config"]
        if not isinstance(config, dict):
            raise ValueError("config must be an object")
        data = _without_legacy(data, "config")
        if "replicas" not in data and "replicas" in config:
            data["replicas"] = config["replicas"]
        return data


class EmbedPayload(_Payload):
    """A bulk embedding job (issue 30): the generation pinned at acceptance and the output's
    shape; the input file and the checkpoint are the job's row (db/embed_jobs.py)."""

    generation: int = Field(ge=1, description="the generation every vector comes from")
    dimensions: int | None = Field(default=None, ge=1, le=65536,
                                   description="the first this many components of each vector")
    normalize: bool = Field(default=True, description="unit vectors (after `dimensions`)")


class RollbackPayload(_Payload):
    """A rollback (issue 26): back to `generation` (None: the generation that served before
    the serving one, decided when the worker claims the task)."""

    generation: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                   description="the generation to go back to")


TaskPayload = DeployPayload | DeletePayload | ScalePayload | EmbedPayload | RollbackPayload
_BY_KIND: dict[TaskKind, type[TaskPayload]] = {
    TaskKind.deploy: DeployPayload, TaskKind.delete: DeletePayload,
    TaskKind.scale: ScalePayload, TaskKind.embed: EmbedPayload,
    TaskKind.rollback: RollbackPayload,
}


def read(kind: str, stored: dict[str, Any]) -> TaskPayload:
    """The payload of a task of `kind` from its stored `request` (ValueError: an unknown
    kind; pydantic's ValidationError, a ValueError too: a shape no task was stored with)."""
    try:
        model = _BY_KIND[TaskKind(kind)]
    except ValueError:
        raise ValueError(f"task kind {kind!r} has no payload") from None
    return model.model_validate(stored)


class _SealedEnv(BaseModel):
    """Only a config's `env`, read leniently: what the log redaction must know even of a row
    that a rule added later would refuse (a redaction that raised would serve no logs)."""

    model_config = ConfigDict(extra="ignore")

    env: dict[str, str] = Field(default_factory=dict)


class _DeployEnv(BaseModel):
    model_config = ConfigDict(extra="ignore")

    config: _SealedEnv = Field(default_factory=_SealedEnv)


def sealed_env(kind: str, stored: dict[str, Any]) -> dict[str, str]:
    """The sealed env values a stored deploy row carries (none for other kinds, or for a
    row whose env is not a map of strings)."""
    if kind != TaskKind.deploy:
        return {}
    try:
        return _DeployEnv.model_validate(stored).config.env
    except ValueError:
        return {}


def config_env(config: dict[str, Any]) -> dict[str, str]:
    """The sealed env values of a deployment's stored config, read as `sealed_env` reads."""
    try:
        return _SealedEnv.model_validate(config).env
    except ValueError:
        return {}
