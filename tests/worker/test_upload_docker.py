"""Issue 12: an uploaded model deploys on Docker too (its store folder mounted read-only).

Builds the model-server image with torch and sentence-transformers (the real one, not the
hashing-only test image), so it is marked slow."""

import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiodocker
import aiohttp
import asyncpg
import pytest

from schemas.settings import Settings
from tests.conftest import REAL_MODEL_DEPLOY_TIMEOUT_S
from tests.service.test_model_upload import MINILM
from tests.support.accounts import call, make_user
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.docker import (
    containers_of,
    deploy,
    remove_test_containers,
    skip_without_engine,
)

skip_without_engine()
pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
async def docker_worker(api: str, spawn: Callable[..., Any], model_image: str,
                        pool: asyncpg.Pool) -> AsyncIterator[str]:
    worker = spawn("worker", runtime="docker", docker_image=model_image)
    yield api
    worker.stop()
    async with aiodocker.Docker() as docker:
        await remove_test_containers(pool, docker)


@pytest.fixture
async def anon_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.mark.timeout(900)
async def test_uploaded_minilm_deploys_and_serves_on_docker(
        docker_worker: str, gateway: str, anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings, tmp_path: Path) -> None:
    api = docker_worker
    _, alice = await make_user(pool, "alice")
    archive = tmp_path / "minilm.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(MINILM, arcname=".")
    status, model = await call(anon_http, "POST", f"{api}/api/v2/models", headers=alice,
                               json={"name": "docker-minilm", "access_level": "public"})
    assert status == 201, model
    status, body = await call(anon_http, "POST",
                              f"{api}/api/v2/models/alice/docker-minilm/upload",
                              headers=alice, data=archive.read_bytes())
    assert status == 200, body

    async with aiohttp.ClientSession(headers=alice) as http:
        done = await deploy(http, api, "alice/docker-minilm",
                            {"memory": 2048, "deploy_timeout_s": REAL_MODEL_DEPLOY_TIMEOUT_S})
    assert done["status"] == "done", done.get("detail")
    status, served = await call(anon_http, "POST", f"{gateway}/v1/embeddings",
                                json={"model": "alice/docker-minilm", "input": "uploaded"})
    assert status == 200, served
    assert len(served["data"][0]["embedding"]) == 384

    async with aiodocker.Docker() as docker:
        (data,) = await containers_of(docker, UUID(model["id"]))
    # The uploaded revision's folder (<store>/<model>/<number>/, issue 26) read-only
    folder = Path(body["source"]["location"])
    assert folder.parent == settings.model_store_dir.resolve() / model["id"], folder
    # The model's files read-only, and its own exports folder: the ONNX export the worker
    # prepared (the `auto` backend, issue 28), never the rest of the store.
    exports = settings.model_store_dir.resolve() / "exports" / model["id"]
    assert data["HostConfig"]["Binds"] == [f"{folder}:/model:ro", f"{exports}:{exports}:rw"]
    env = dict(e.split("=", 1) for e in data["Config"]["Env"])
    assert env["MODEL_SERVER_BACKEND"] == "onnx" and \
        env["MODEL_SERVER_EXPORT_ENTRY"].startswith(str(exports))
    assert data["HostConfig"]["ReadonlyRootfs"] is True
