"""Model registry shapes: where a model's weights come from."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PACKAGE_PREFIX = "package:"


class ModelSource(BaseModel):
    """How a replica loads the model: a backend and where its weights are."""

    model_config = ConfigDict(extra="forbid")

    # auto: the worker exports the model to ONNX once and its replicas run the export without
    # torch when it agrees with torch, else torch (worker/auto_backend.py).
    backend: Literal["auto", "sentence-transformers", "onnx", "hashing"] = "auto"
    location: str | None = Field(default=None, description="model directory or package:NAME")
    dimension: int | None = Field(default=None, ge=1, le=8192)
    # Test knob of the hashing backend: seconds before the replica reports healthy.
    startup_delay_s: float | None = Field(default=None, ge=0)
    # Test knobs of the hashing backend: a service time per request (ms) and a cap on the
    # requests one replica serves at once, so a replica's capacity is known.
    test_service_time_ms: float | None = Field(default=None, ge=0, le=60_000)
    test_concurrency: int | None = Field(default=None, ge=1, le=1024)
    # Test knob of the hashing backend: this share of embedding requests answers 500
    # (a bad canary candidate).
    test_error_rate: float | None = Field(default=None, ge=0, le=1)
    # Docker image for this model; the runtime's default when empty.
    image: str | None = None


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    source: ModelSource = Field(default_factory=ModelSource)
    access_level: Literal["private", "protected", "public"] = "private"
    default_permission: Literal["read", "write"] = "read"
    dependencies: list[str] = Field(default_factory=list)
