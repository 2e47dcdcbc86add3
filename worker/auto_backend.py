"""The `auto` backend (issue 28): the worker, not the replica, exports a model's files to
ONNX once and checks them against torch; replicas then load the export with onnxruntime and
tokenizers alone, or run torch when the model does not export or does not agree.

A deploy of an `auto` model goes through a `preparing` phase first. The decision is made
by `python -m model_server.onnx_prepare` in a process of its own (it imports torch, which
the worker never does), once per content of the model's files and variant, in the
worker's cache (`Settings.onnx_cache_dir`); every later deploy of the same files finds it
there. The export, its reference vectors and agreement records are then copied into the
model's own folder of the store (`exports/<model id>/<fingerprint>/`, the folder its
replicas may read: never the shared cache), and `exports/<model id>/auto-<generation>.json`
says what replicas of that generation run: one decision per generation, so a new
generation's preparing (which may be refused or fail later) never changes what the
serving one starts (review 5). `resolved` reads it at every replica start (rollout, scale,
repair, restore); no file, or files changed since, means torch. A generation prepared
before decisions were kept per generation reads the model's `auto.json`.
"""

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import structlog

from db import models
from db.models import Model
from model_server.backends import resolve_model_dir
from model_server.config import DEFAULT_MODEL
from model_server.errors import BackendLoadError
from model_server.onnx_export import ExportEntry, fingerprint
from model_server.onnx_prepare import ONNX, TORCH, cached_decision, decision_path
from schemas.file_modes import private_dir
from schemas.settings import Settings
from schemas.tasks import DeploymentConfig, OnnxOptions, Phase
from worker.context import WorkerContext

log = structlog.get_logger(__name__)

AUTO_BACKEND = "auto"
DECISION_FILE = "auto.json"
_STDERR_TAIL = 2000


class PhaseRecorder(Protocol):
    """What the rollout's Progress offers (worker/rollout.py)."""

    async def enter(self, phase: Any, **metadata: Any) -> None: ...

    async def note(self, **metadata: Any) -> None: ...

    async def event(self, level: str, message: str, generation: int | None = None) -> None: ...


def cache_dir(settings: Settings) -> Path:
    """The worker's own export cache, shared by every model with the same files."""
    return (settings.onnx_cache_dir or Path.home() / ".cache/greenroom/onnx").resolve()


def model_exports(settings: Settings, model_id: UUID) -> Path:
    """`<store>/exports/<model id>`: the folder this model's replicas are given."""
    return (settings.model_store_dir / "exports" / str(model_id)).resolve()


def wanted_quantize(config: DeploymentConfig) -> str:
    return (config.onnx or OnnxOptions()).quantize


def decision_file(generation: int | None) -> str:
    """The file that records the decision generation `generation` runs by (None: the
    model's, as kept before decisions were per generation)."""
    return DECISION_FILE if generation is None else f"auto-{generation}.json"


def _read_decision(settings: Settings, model_id: UUID,
                   generation: int | None) -> dict[str, Any] | None:
    """The decision `generation` runs by; None when none was recorded (or unreadable)."""
    exports = model_exports(settings, model_id)
    names = [decision_file(generation)] + ([DECISION_FILE] if generation is not None else [])
    for name in names:
        try:
            found = json.loads((exports / name).read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None
    return None


def resolved(settings: Settings, model_id: UUID, source: dict[str, Any],
             generation: int | None = None) -> dict[str, Any]:
    """An `auto` source as the replicas of `generation` run it: `onnx` with its prepared
    export folder, or `sentence-transformers`. Other sources unchanged."""
    if source.get("backend") != AUTO_BACKEND:
        return source
    exports = model_exports(settings, model_id)
    decision = _read_decision(settings, model_id, generation) or {}
    entry = exports / str(decision.get("fingerprint"))
    if decision.get("backend") == ONNX and entry.is_dir():
        return {**source, "backend": ONNX, "export_entry": str(entry)}
    return {**source, "backend": TORCH}


def effective_backend(settings: Settings, model: Model,
                      generation: int | None = None) -> str | None:
    """The backend quotas and capacity count the replicas of `model`'s `generation` as:
    `auto` while it runs (or is yet to be judged for) the worker's ONNX export, torch once
    it fell back."""
    return backend_of(settings, model.id, model.source.get("backend"), generation)


def backend_of(settings: Settings, model_id: UUID, backend: Any,
               generation: int | None) -> str | None:
    """`effective_backend` of a model known by its id and its source's `backend`."""
    if backend != AUTO_BACKEND:
        return str(backend) if backend is not None else None
    decision = _read_decision(settings, model_id, generation)
    if decision is None:
        return AUTO_BACKEND
    return AUTO_BACKEND if decision.get("backend") == ONNX else TORCH


def _prepare_env() -> dict[str, str]:
    """The worker's environment without its own settings (the secret key, the database's
    and Redis' URLs): the export reads a tenant's files; offline, as replicas are."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")},
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


async def _run_prepare(settings: Settings, location: str,
                       quantize: str) -> dict[str, Any]:
    """Run the preparation in its own process; its decision, or torch with the reason."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "model_server.onnx_prepare", location, str(cache_dir(settings)),
        "--quantize", quantize, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_prepare_env())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), settings.onnx_prepare_timeout_s)
    except TimeoutError:
        return {"backend": TORCH, "reason": f"the ONNX export did not finish in "
                                            f"{settings.onnx_prepare_timeout_s:.0f} s"}
    finally:  # timed out, or the task cancelled (the worker stops): the export goes too
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        decision: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = err.decode(errors="replace").strip()[-_STDERR_TAIL:]
        return {"backend": TORCH,
                "reason": f"the ONNX export exited with code {proc.returncode}: {tail}"}
    return decision


def _copy_entry(source: ExportEntry, target: Path, decision: dict[str, Any]) -> None:
    """The files replicas read, copied (never linked: a replica may own its folder) into
    the model's own folder; the decision last, so a replica never sees half of it."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.root.iterdir():
        if path.is_file() and not path.name.startswith(".") and \
                not (target / path.name).is_file():
            tmp = target / f".{path.name}.copy"
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target / path.name)


def _write_decision(exports: Path, decision: dict[str, Any], name: str) -> None:
    exports.mkdir(parents=True, exist_ok=True)
    tmp = exports / f".{name}.tmp"
    tmp.write_text(json.dumps(decision, indent=2))
    os.chmod(tmp, 0o644)
    os.replace(tmp, exports / name)


def _find(settings: Settings, location: str, quantize: str) -> tuple[ExportEntry,
                                                                     dict[str, Any] | None]:
    entry = ExportEntry(cache_dir(settings) / fingerprint(resolve_model_dir(location)))
    return entry, cached_decision(entry, "int8" if quantize == "int8" else "none")


async def decide(settings: Settings, model_id: UUID, location: str,
                 quantize: str, generation: int | None = None) -> dict[str, Any]:
    """Find or make the decision for these files and variant, and put it (and the export)
    where the replicas of the model's `generation` read it. Adds `prepared_s` and
    `cached`."""
    started = time.monotonic()
    try:
        entry, decision = await asyncio.to_thread(_find, settings, location, quantize)
    except BackendLoadError as exc:
        decision = {"backend": TORCH, "reason": f"model files not readable here: {exc}"}
        entry = None
    cached = decision is not None
    exports = model_exports(settings, model_id)
    try:
        if decision is None:
            private_dir(cache_dir(settings).parent)
            decision = await _run_prepare(settings, location, quantize)
        if decision.get("backend") == ONNX and entry is not None \
                and decision_path(entry, "none").is_file():
            private_dir(settings.model_store_dir.resolve())
            await asyncio.to_thread(_copy_entry, entry, exports / entry.root.name, decision)
        elif decision.get("backend") == ONNX:  # files changed under the export: not trusted
            decision = {"backend": TORCH, "reason": "the export's decision was not recorded"}
    except OSError as exc:  # a cache or store this worker cannot write
        decision = {"backend": TORCH, "reason": f"the export could not be kept: {exc}"}
    with contextlib.suppress(OSError):  # unwritten, replicas find no decision: torch
        await asyncio.to_thread(_write_decision, exports, decision, decision_file(generation))
    return {**decision, "cached": cached, "prepared_s": round(time.monotonic() - started, 2)}


def _summary(decision: dict[str, Any]) -> str:
    if decision.get("backend") != ONNX:
        return f"backend auto: runs torch (sentence-transformers): {decision.get('reason')}"
    agreement = decision.get("agreement") or {}
    how = "found the export made before" if decision.get("cached") else "exported"
    text = (f"backend auto: runs ONNX {decision.get('variant')} ({how}; mean cosine "
            f"{agreement.get('mean_cosine')} to torch, top-1 agreement "
            f"{agreement.get('top1_agreement')}, {decision.get('prepared_s')} s)")
    if decision.get("int8_refused"):
        text += f"; int8 refused, fp32 runs: {decision['int8_refused']}"
    return text


async def prepare(ctx: WorkerContext, progress: PhaseRecorder, model: Model,
                  config: DeploymentConfig, generation: int) -> None:
    """The `preparing` phase of an `auto` model's deploy (nothing for other backends)."""
    if model.source.get("backend") != AUTO_BACKEND:
        return
    await progress.enter(Phase.preparing, generation=generation)
    location = str(model.source.get("location") or DEFAULT_MODEL)
    decision = await decide(ctx.settings, model.id, location, wanted_quantize(config),
                            generation)
    summary = {key: decision.get(key) for key in
               ("backend", "variant", "agreement", "reason", "int8_refused", "cached",
                "prepared_s", "fingerprint")
               if decision.get(key) is not None}
    await progress.note(auto_backend=summary)
    await models.merge_metadata(ctx.pool, model.id, {"auto_backend": summary})
    level = "info" if decision.get("backend") == ONNX and not decision.get("int8_refused") \
        else "warning"
    await progress.event(level, _summary(decision), generation)
    log.info("auto_backend_prepared", model=str(model.id), **summary)
