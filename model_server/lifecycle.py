"""The model's life in one server: background load, warm-up, readiness, close."""

import asyncio
import ctypes
import functools
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from model_server.backends import HASHING_MAX_INPUT_LENGTH, Embedder, HashingEmbedder
from model_server.batcher import Batcher
from model_server.config import Settings
from model_server.errors import NotReady
from model_server.metrics import Metrics

Loader = Callable[[Settings], Awaitable[Embedder]]
WARM_UP_TEXT = "Warm-up pass of the model server."

log = structlog.get_logger("model_server")


async def load_backend(settings: Settings) -> Embedder:
    """Load the configured backend without blocking the event loop."""
    if settings.backend == "hashing":
        await asyncio.sleep(settings.startup_delay_s)
        length = settings.max_input_length or HASHING_MAX_INPUT_LENGTH
        return HashingEmbedder(settings.dimension, length)
    from model_server.preload import load_blocking  # ONNX Runtime or torch only when asked for

    return await asyncio.to_thread(load_blocking, settings)


@dataclass
class ModelState:
    """Where the model stands; handlers ask it for the backend and batcher."""

    settings: Settings
    metrics: Metrics
    backend: Embedder | None = None
    batcher: Batcher | None = None
    ready: bool = False
    failure: str | None = None
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False  # SIGTERM came: every answer says `Connection: close`

    def require_ready(self) -> tuple[Embedder, Batcher]:
        if not self.ready or self.backend is None or self.batcher is None:
            raise NotReady(self.failure or "the model is loading")
        return self.backend, self.batcher

    async def close(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.close()


async def load_and_warm(state: ModelState, loader: Loader) -> None:
    """Load the backend, run one warm-up batch, then mark the state ready.

    A failure is recorded and signalled so the server can exit non-zero.
    """
    settings = state.settings
    log.info("model_loading", backend=settings.backend, model=settings.model)
    try:
        state.backend = await loader(settings)
        state.batcher = _start_batcher(state.backend, settings, state.metrics)
        # One input proves the model runs and pays its first-run costs; a full batch would
        # only fill buffers the onnx backend (no arena, issue 28) frees again, and delay
        # readiness by a batch's compute.
        await state.batcher.embed([WARM_UP_TEXT])
        release_freed_memory()
    except Exception as exc:
        state.failure = f"model failed to load: {exc}"
        log.error(
            "model_load_failed", backend=settings.backend, model=settings.model, error=str(exc)
        )
        state.failed.set()
        return
    state.ready = True
    log.info(
        "model_ready",
        model_id=settings.served_model_id,
        backend=state.backend.name,
        dimension=state.backend.dimension,
        max_input_length=state.backend.max_input_length,
        frameworks=loaded_frameworks(),
    )


def release_freed_memory() -> None:
    """Hand the heap the load freed back to the system (glibc keeps it otherwise): the
    model file's bytes once its session holds the weights, ~25 MB of a MiniLM ONNX
    replica's RSS. Nothing where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


# The inference frameworks a replica may load; the onnx path imports only the last two.
FRAMEWORKS = ("torch", "transformers", "sentence_transformers", "onnxruntime", "tokenizers")


def loaded_frameworks() -> list[str]:
    """Which of FRAMEWORKS this process has imported."""
    return [name for name in FRAMEWORKS if name in sys.modules]


def _start_batcher(backend: Embedder, settings: Settings, metrics: Metrics) -> Batcher:
    batcher = Batcher(
        backend.embed,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_batch_wait_ms / 1000,
        queue_limit=settings.queue_limit,
        metrics=metrics,
        max_batch_tokens=settings.max_batch_tokens,
        lengths=functools.partial(_truncated_lengths, backend),
        batch_lane_every=settings.batch_lane_every,
        mixed_batch_size=settings.mixed_batch_size,
        interactive_reserve=settings.batch_lane_reserve,
    )
    batcher.start()
    return batcher


def _truncated_lengths(backend: Embedder, texts: list[str]) -> list[int]:
    """Each input's tokens as the model will see them (counted on the compute thread)."""
    limit = backend.max_input_length
    return [min(count, limit) for count in backend.count_tokens(texts)]
