"""Fixtures for tests against a real Docker Engine: the engine, the test image, a runtime
(a plugin of tests/conftest.py, so every part's docker tests have them; the control-plane
client as the administrator is tests/support/as_admin.py's `http`).

Without an engine each docker test module skips with one line (`skip_without_engine()`
at its top), except under CI (`CI` set), where the `docker_image` fixture fails instead:
start an engine with `.ci/docker-engine.sh`.
"""

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from uuid import UUID, uuid4

import aiodocker
import aiohttp
import asyncpg
import pytest

from launch import image
from schemas.settings import Settings
from tests.conftest import TEST_CLUSTER, wait_task
from worker.runtimes.base import LABEL_GENERATION, LABEL_MODEL, ReplicaSpec
from worker.runtimes.docker import DockerRuntime, network_name

NO_ENGINE = "no Docker Engine answers `docker info` (start one: .ci/docker-engine.sh)"


@functools.cache
def engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def skip_without_engine() -> None:
    """Call at the top of a docker test module: one skip line for it when no engine answers."""
    if not os.environ.get("CI") and not engine_answers():
        pytest.skip(NO_ENGINE, allow_module_level=True)


@pytest.fixture(scope="session")
def docker_image() -> Iterator[str]:
    """The hashing-only model-server image, built once per session (skipped if unchanged);
    afterwards this session's replica network goes (bridge networks are a scarce pool)."""
    if not engine_answers():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {NO_ENGINE}", pytrace=False)
        pytest.skip(NO_ENGINE)
    # One tag per checkout: two checkouts testing side by side build different sources.
    tag = f"{image.TEST_TAG}-{hashlib.sha1(str(image.REPO_ROOT).encode()).hexdigest()[:8]}"
    build_once(tag, with_model=False)
    yield tag
    name = network_name(TEST_CLUSTER)
    subprocess.run(["docker", "network", "rm", name, f"{name}-swarm"], capture_output=True,
                   check=False)


@pytest.fixture(scope="session")
def model_image(docker_image: str) -> str:
    """The full model-server image (torch, onnxruntime, the bundled model): built once per
    checkout, and again only when its inputs change (about 150 s here)."""
    tag = f"{image.TEST_TAG}-model-{hashlib.sha1(str(image.REPO_ROOT).encode()).hexdigest()[:8]}"
    build_once(tag, with_model=True)
    return tag


def build_once(tag: str, with_model: bool) -> None:
    """`image.build` under a file lock per tag: the sessions of one run (pytest-xdist
    workers) ask for the same tag; the first builds it, the others wait and then find it
    up to date instead of importing the same root filesystem side by side. An image of
    the same inputs that another checkout built (a fresh clone of the same commit) is
    tagged, not built again: minutes for the full model image."""
    from filelock import FileLock

    name = hashlib.sha1(tag.encode()).hexdigest()[:12]
    with FileLock(f"{tempfile.gettempdir()}/greenroom-image-{name}.lock"):
        image.build(tag, with_model=with_model, any_tag=True)


@pytest.fixture
async def runtime(docker_image: str) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(Settings(runtime="docker", docker_image=docker_image,
                                cluster=TEST_CLUSTER))
    yield rt
    await rt.close()


@pytest.fixture
async def docker_api() -> AsyncIterator[aiodocker.Docker]:
    """A raw Engine client, to check what the runtime asked for."""
    client = aiodocker.Docker()
    yield client
    await client.close()


@pytest.fixture
async def make_spec(runtime: DockerRuntime) -> AsyncIterator[Callable[..., ReplicaSpec]]:
    """Factory of hashing-backend specs; every container of their models is removed after."""
    models: set[UUID] = set()

    def _make(model_id: UUID | None = None, generation: int = 1, **overrides: Any) -> ReplicaSpec:
        spec_model = model_id or uuid4()
        models.add(spec_model)
        fields: dict[str, Any] = {
            "replica_id": uuid4(), "model_id": spec_model, "model_identifier": "test/hash",
            "generation": generation, "task_id": uuid4(),
            "source": {"backend": "hashing", "dimension": 16}, **overrides,
        }
        return ReplicaSpec(**fields)

    yield _make
    for info in await runtime.list():
        if info.model_id in models:
            with contextlib.suppress(Exception):
                await runtime.remove(info.runtime_ref)


async def wait_health(endpoint: str, timeout_s: float = 30) -> int:
    """Poll GET /health from the host until 200; returns the last status seen."""
    status = 0
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{endpoint}/health") as resp:
                    status = resp.status
                    if status == 200:
                        return status
            await asyncio.sleep(0.2)
    return status


async def wait_exit(runtime: DockerRuntime, ref: str, timeout_s: float = 30) -> Any:
    """Poll inspect until the replica is no longer running; returns its ReplicaInfo."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = await runtime.inspect(ref)
        if info is None or not info.running:
            return info
        await asyncio.sleep(0.2)
    raise TimeoutError(f"container {ref[:12]} still running after {timeout_s}s")


# ---------------------------------------------------------------- the API and a docker worker

# A model whose weights need far more memory than the smallest limit a deploy accepts
# (128 MB): the test image, but loading "weights" of 512 MB before starting the server.
# Tagged per test session: one session's cleanup must not remove another's image.
HOG_TAG = f"greenroom/model-server:test-hog-{os.getpid()}"
HOG_MB = 512
_HOG_CODE = (f"print('loading model weights: {HOG_MB} MB', flush=True); import time; "
             f"time.sleep(0.5); weights = b'x' * ({HOG_MB} * 2**20); import runpy; "
             "runpy.run_module('model_server', run_name='__main__')")


async def containers_of(docker_api: aiodocker.Docker, model_id: UUID,
                        generation: int | None = None) -> list[dict[str, Any]]:
    """Inspect answers of every container (running or not) labelled with the model."""
    wanted = [f"{LABEL_MODEL}={model_id}"]
    if generation is not None:
        wanted.append(f"{LABEL_GENERATION}={generation}")
    found = await docker_api.containers.list(all=True, filters=json.dumps({"label": wanted}))
    return [await c.show() for c in found]


async def remove_test_containers(pool: asyncpg.Pool, docker_api: aiodocker.Docker) -> None:
    """Remove every container of this session's models (other sessions' are not touched)."""
    for row in await pool.fetch("SELECT id FROM models"):
        for data in await containers_of(docker_api, row["id"]):
            with contextlib.suppress(aiodocker.DockerError):
                await docker_api.containers.container(data["Id"]).delete(force=True)


@pytest.fixture
async def docker_stack(api: str, gateway: str, spawn: Callable[..., Any], docker_image: str,
                       docker_api: aiodocker.Docker, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """The API, a gateway (the `gateway` fixture) and one worker on the docker runtime;
    returns the API's base URL.

    Afterwards the worker is stopped first, then any container of this test's models that
    a failing test left behind is removed (other sessions' containers are not touched).
    """
    worker = spawn("worker", runtime="docker", docker_image=docker_image)
    yield api
    worker.stop()
    await remove_test_containers(pool, docker_api)


def image_running(base: str, code: str, tag: str) -> str:
    """Tag `tag`: the image `base` whose command runs the Python `code` instead (a test's
    variant: a hog, a hostile model). Its inputs label is emptied: a commit keeps the
    base's, and `image.build`'s reuse of an image of the same inputs under another tag
    (another checkout's test image) would then find the variant and tag it as that
    checkout's test image."""
    created = subprocess.run(["docker", "create", base], capture_output=True,
                             text=True, check=True).stdout.strip()
    try:
        cmd = json.dumps(["python", "-c", code])
        subprocess.run(["docker", "commit", "--change", f"CMD {cmd}",
                        "--change", f'LABEL {image.INPUTS_LABEL}=""', created, tag],
                       capture_output=True, check=True)
    finally:
        subprocess.run(["docker", "rm", "-f", created], capture_output=True, check=False)
    return tag


@pytest.fixture(scope="session")
def hog_image(docker_image: str) -> Iterator[str]:
    """The test image with a model too big for a 128 MB limit (see HOG_MB)."""
    image_running(docker_image, _HOG_CODE, HOG_TAG)
    yield HOG_TAG
    subprocess.run(["docker", "image", "rm", HOG_TAG], capture_output=True, check=False)


async def deploy(http: aiohttp.ClientSession, base: str, model: str,
                 config: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST /deploy and wait for the task to end (a little past the deploy's own timeout
    where the config sets one); returns the finished task."""
    body = {"embedding_model_id": model, "config": config or {}}
    async with http.post(f"{base}/deploy", json=body) as resp:
        assert resp.status == 202, await resp.text()
        task = await resp.json()
    wait_s = max(90.0, float(body["config"].get("deploy_timeout_s", 0)) + 30)
    return await wait_task(http, base, "deploy", task["task_id"], timeout_s=wait_s)


async def embed(http: aiohttp.ClientSession, base: str, name: str) -> tuple[int, str]:
    """One TEI request through the gateway: (status, replica id that answered)."""
    async with http.post(f"{base}/serve/{name}/embed", json={"inputs": "hello"}) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Greenroom-Replica", "")
