"""Issue 29 through a Docker replica: the lane a request names reaches the model server in
its container, and a deadline that passes while the request waits there is a 504 with the
JSON error body, its work never computed and counted in /metrics."""

import asyncio
import re
import time
from collections.abc import Callable

import aiohttp
import pytest

from schemas.lanes import PRIORITY_HEADER, TIMEOUT_HEADER
from tests.support.docker import skip_without_engine, wait_health
from worker.runtimes.base import ReplicaSpec
from worker.runtimes.docker import DockerRuntime

skip_without_engine()
pytestmark = pytest.mark.docker


def _counter(text: str, name: str, lane: str) -> float:
    match = re.search(rf'^{name}\{{lane="{lane}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.timeout(120)
async def test_a_docker_replica_takes_the_lane_and_drops_work_past_its_deadline(
        runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec]) -> None:
    # One slot held a second per request (the hashing backend's capacity knobs), so a
    # second request waits inside the container.
    spec = make_spec(source={"backend": "hashing", "dimension": 16,
                             "test_service_time_ms": 1000, "test_concurrency": 1})
    started = await runtime.start(spec)
    base = started.endpoint
    assert await wait_health(base, 60) == 200
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/embed", json={"inputs": ["a", "b", "c"]},
                             headers={PRIORITY_HEADER: "batch"}) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert _counter(text, "model_server_lane_inputs_total", "batch") == 3
        computed = _counter(text, "model_server_lane_inputs_total", "interactive")  # warm-up

        async def first() -> int:
            async with http.post(f"{base}/embed", json={"inputs": "holds the slot"}) as r:
                await r.read()
                return r.status

        holder = asyncio.create_task(first())
        await asyncio.sleep(0.3)
        waited = time.monotonic()
        async with http.post(f"{base}/embed", json={"inputs": "too late"},
                             headers={TIMEOUT_HEADER: "0.2"}) as resp:
            body = await resp.json()
            assert resp.status == 504, body
        assert "X-Request-Timeout" in body["error"] and body["error_type"] == "Backend"
        assert time.monotonic() - waited < 0.9  # answered at its deadline, not the slot's
        assert await holder == 200
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert _counter(text, "model_server_expired_total", "interactive") == 1
        # The dropped input was never embedded: the holder's alone was, since.
        assert _counter(text, "model_server_lane_inputs_total", "interactive") == computed + 1
