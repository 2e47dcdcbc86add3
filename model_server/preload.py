"""The onnx model's load, begun before the server's own imports (issue 28).

`python -m model_server` reads its settings and, for the onnx backend, starts loading the
session and tokenizer on a thread of its own; the main thread then imports aiohttp and the
app (~0.3 s of a replica's start) while ONNX Runtime reads the weights and builds the
session with the GIL released. The app's loader (`Preload.loader`) then waits for that
load instead of starting one. Before the thread starts, this module has imported every
Python module of the backend except onnxruntime and tokenizers, which only the thread
imports: the two threads never import the same modules at once.

Only a replica of an export the worker prepared (`MODEL_SERVER_EXPORT_ENTRY`: the `auto`
backend, the default deployment) preloads: its load needs nothing but onnxruntime and
tokenizers. One that may have to export or measure first would import torch and
transformers on the thread, beside the server's imports of many of the same modules, and
the torch backend's 10 s import would gain little: both load as before, after the server's
imports.
"""

import asyncio
import concurrent.futures
import threading
import time

import structlog
from pydantic import ValidationError

from model_server.backends import Embedder, SentenceTransformerBackend, resolve_model_dir
from model_server.config import Settings
from model_server.logs import configure_logging
from model_server.onnx_backend import load_onnx

log = structlog.get_logger("model_server")


def load_blocking(settings: Settings) -> Embedder:
    """Load the configured model (onnx or sentence-transformers) on this thread."""
    model_dir = resolve_model_dir(settings.model)
    if settings.backend == "onnx":
        return load_onnx(model_dir, settings)
    return SentenceTransformerBackend.load(model_dir, settings.max_input_length,
                                           settings.num_threads)


class Preload:
    """One load of the model on a thread, begun at once; `loader` is the app's `Loader`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._done: concurrent.futures.Future[Embedder] = concurrent.futures.Future()
        threading.Thread(target=self._run, name="model-preload", daemon=True).start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            backend = load_blocking(self.settings)
        except BaseException as exc:  # handed to the app's load, which reports it
            self._done.set_exception(exc)
            return
        log.info("model_preloaded", seconds=round(time.monotonic() - started, 3))
        self._done.set_result(backend)

    async def loader(self, settings: Settings) -> Embedder:
        assert settings is self.settings, "a preload serves the settings it was begun with"
        return await asyncio.wrap_future(self._done)


def begin() -> Preload | None:
    """Settings read and logging configured; for an onnx replica of a prepared export, its
    load begun. None when the settings are invalid (the server reports them) or the
    replica does not preload (see the module's doc)."""
    try:
        settings = Settings()
    except ValidationError:
        return None
    configure_logging(settings.log_level)
    if settings.backend != "onnx" or settings.export_entry is None:
        return None
    return Preload(settings)
