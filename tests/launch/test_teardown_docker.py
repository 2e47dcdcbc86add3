"""Issue 19, must-show 4 on Docker: the teardown `greenroom up` runs on Ctrl-C removes every
container of its installation (cluster label), and only those."""

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from tests.conftest import TEST_CLUSTER
from tests.support.docker import skip_without_engine, wait_health
from worker.runtimes.docker import DockerRuntime

skip_without_engine()
pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]


async def _teardown(cluster: str, image: str, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env |= {"GREENROOM_RUNTIME": "docker", "GREENROOM_CLUSTER": cluster,
            "GREENROOM_DOCKER_IMAGE": image, "GREENROOM_STOP_GRACE_S": "2"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.teardown", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out = (await asyncio.wait_for(proc.communicate(), 120))[0].decode()
    assert proc.returncode == 0, out
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def test_teardown_removes_every_container_of_its_cluster_only(
        runtime: DockerRuntime, make_spec: Callable[..., Any], docker_image: str,
        docker_api: aiodocker.Docker) -> None:
    model = make_spec().model_id
    started = [await runtime.start(make_spec(model_id=model)) for _ in range(2)]
    started.append(await runtime.start(make_spec()))
    for replica in started:
        assert await wait_health(replica.endpoint) == 200

    other = await _teardown(f"{TEST_CLUSTER}-someone-else", docker_image)
    assert other == {"stopped": 0, "deployments": 0, "removed": 0}
    assert len(await runtime.list()) >= 3, "another installation's teardown left ours alone"

    result = await _teardown(TEST_CLUSTER, docker_image)
    assert result["stopped"] >= 3 and result["deployments"] >= 2, result
    assert await runtime.list() == []
    filters = json.dumps({"label": [f"io.greenroom.cluster={TEST_CLUSTER}"]})
    assert await docker_api.containers.list(all=True, filters=filters) == []
