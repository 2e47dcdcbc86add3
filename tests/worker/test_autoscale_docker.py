"""Issue 14, must-show 5: must-show 1's scale-up and scale-down on the Docker runtime.

The same steps and criteria as the process test (`scale_cycle`), with a longer load at
most: containers start slower than processes, so the first replica queues a larger backlog
before help comes, and serving it takes longer; the p99 is measured once it is served,
over at least 10 s of the load (which ends once they are measured).
"""

from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.autoscale import FAST_AUTOSCALING, KNOBS
from tests.support.docker import deploy, skip_without_engine
from tests.worker.test_autoscale_load import scale_cycle

skip_without_engine()
# Paced load with a p99 check: it runs in the serial phase, alone on the cores.
pytestmark = [pytest.mark.docker, pytest.mark.serial]
LOAD_S = 45  # the most the load runs


async def test_load_scales_containers_up_and_back_to_min(
        docker_stack: str, gateway: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any) -> None:
    model_id = await hashing_model("busy-docker", **KNOBS)
    config = FAST_AUTOSCALING | {"autoscaling_min": 1, "autoscaling_max": 4}
    assert (await deploy(http, docker_stack, "alice/busy-docker", config))["status"] == "done"
    await scale_cycle(docker_stack, gateway, http, pool, model_id, "busy-docker", LOAD_S)
