"""Issue 15, must-show 2: the swarm runtime on a two-node swarm.

Two Docker daemons, each in its own network namespace, form a swarm
(tests/multihost/swarm_bed.py); the API, a gateway and a worker on the swarm runtime run
in other namespaces (tests/multihost/conftest.py). One deployment's replicas land on both
nodes and answer through the gateway across the bridge; a redeploy under 60 requests/s
for 20 s fails no request; node n2 drained under the same load: its replicas move to n1,
the routing table follows, and the failed requests are counted and printed.

Run under the Docker lock: `flock /tmp/greenroom-docker.lock pytest tests/multihost/...`.
"""

import asyncio
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp
import pytest

from db import deployments, replicas, users
from schemas.models import ModelSource
from schemas.tokens import issue_user_token
from service.domain.accounts import hash_password
from service.domain.registration import register
from tests.conftest import TEST_SECRET_KEY, bearer
from tests.multihost.conftest import Plane, SwarmPlane
from tests.support.load import run_load

REPLICAS = 4
RATE = 60.0
LOAD_S = 20.0
# serial: paced load, asserting its rate and that no request failed (tests/support/scheduling.py).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(600)]


async def _deploy(http: aiohttp.ClientSession, plane: Plane, headers: dict[str, str],
                  timeout_s: float = 120) -> dict[str, Any]:
    body = {"embedding_model_id": "alice/spread", "config": {"replicas": REPLICAS}}
    async with http.post(f"{plane.api}/deploy", json=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        task_id = (await resp.json())["task_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(f"{plane.api}/deploy/{task_id}", headers=headers) as resp:
            task: dict[str, Any] = await resp.json()
        if task.get("status") not in ("pending", "processing"):
            assert task.get("status") == "done", task
            return task
        assert time.monotonic() < deadline, (f"deploy still {task.get('status')}; worker log:\n"
                                             f"{plane.log_tail('worker', 40)}")
        await asyncio.sleep(0.2)


async def _placement(plane: Plane, model_id: UUID) -> tuple[int | None, Counter[str]]:
    """(active generation, node address → its ready replicas of that generation)."""
    deployment = await deployments.get(plane.pool, model_id)
    generation = deployment.active_generation if deployment else None
    where: Counter[str] = Counter(
        urlsplit(r.endpoint or "").hostname or "?"
        for r in await replicas.list_serving(plane.pool)
        if r.model_id == model_id and r.generation == generation)
    return generation, where


async def _answering_nodes(http: aiohttp.ClientSession, plane: Plane,
                           count: int = 48) -> Counter[str]:
    """Node address of the replica behind each of `count` requests through the gateway,
    sent 16 at a time (the gateway picks the least busy replica, the first on a tie, so
    one at a time would all go to one)."""
    rows = {str(r.id): r for r in await replicas.list_serving(plane.pool)}
    nodes: Counter[str] = Counter()
    limit = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with limit, http.post(f"{plane.gateway}/serve/spread/embed",
                                    json={"inputs": f"which node {i}"}) as resp:
            assert resp.status == 200, await resp.text()
            row = rows.get(resp.headers["X-Greenroom-Replica"])
            nodes[urlsplit(row.endpoint or "").hostname or "?" if row else "unknown"] += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return nodes


async def test_two_node_swarm(swarm_plane: SwarmPlane) -> None:
    plane = swarm_plane.plane
    n1, n2 = plane.hosts["n1"].address, plane.hosts["n2"].address
    assert set(swarm_plane.nodes.values()) == {n1, n2}
    n2_id = next(i for i, a in swarm_plane.nodes.items() if a == n2)
    admin = await users.create(plane.pool, username="admin", is_admin=True,
                               password_hash=hash_password("admin-password-123"))
    headers = bearer(issue_user_token(TEST_SECRET_KEY, admin.id))
    model = await register(plane.pool, "alice", "spread",
                           ModelSource(backend="hashing", dimension=64), "public")
    url = f"{plane.gateway}/serve/spread/embed"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # Replicas of one deployment on both nodes, answering through the gateway.
        await _deploy(http, plane, headers)
        generation, where = await _placement(plane, model.id)
        assert set(where) == {n1, n2}, where
        answered = await _answering_nodes(http, plane)
        assert set(answered) == {n1, n2}, answered

        # A redeploy under load: no request fails.
        load_task = asyncio.create_task(run_load(url, RATE, LOAD_S, concurrency=32))
        await asyncio.sleep(2)
        redeploy_started = time.monotonic()
        await _deploy(http, plane, headers)
        redeploy_s = time.monotonic() - redeploy_started
        redeploy = await load_task
        new_generation, where_after = await _placement(plane, model.id)
        assert new_generation != generation
        assert set(where_after) == {n1, n2}, where_after
        redeploy_rate = redeploy.sent / redeploy.elapsed_s
        assert redeploy.failures == [], (redeploy.failures[:5], _failed_answers(plane))
        assert redeploy_rate >= 50, redeploy_rate

        # Drain n2 mid-load: its replicas move to n1, the table follows.
        load_task = asyncio.create_task(run_load(url, RATE, LOAD_S, concurrency=32))
        await asyncio.sleep(3)
        drained_at = time.monotonic()
        swarm_plane.manager.cli("node", "update", "--availability", "drain", n2_id)
        deadline = drained_at + 60
        while True:
            gen, where = await _placement(plane, model.id)
            if gen == new_generation and where == Counter({n1: REPLICAS}):
                break
            assert time.monotonic() < deadline, f"replicas did not leave n2: {where}"
            await asyncio.sleep(0.2)
        moved_s = time.monotonic() - drained_at
        drain = await load_task
        after = await _answering_nodes(http, plane)
        swarm_plane.manager.cli("node", "update", "--availability", "active", n2_id)
    print(f"\ntwo-node swarm: {REPLICAS} replicas on {dict(where_after)}; redeploy in "
          f"{redeploy_s:.1f}s under {redeploy_rate:.0f} req/s for {redeploy.elapsed_s:.0f}s: "
          f"{redeploy.sent} sent, {len(redeploy.failures)} failed; drain of n2: replicas on "
          f"n1 after {moved_s:.1f}s, gateway answers then from {dict(after)}; "
          f"{drain.sent} requests at {drain.sent / drain.elapsed_s:.0f} req/s, "
          f"{len(drain.failures)} failed {drain.failures[:3]}")
    assert set(after) == {n1}, after
    assert drain.failures == [], (drain.failures[:5], _failed_answers(plane))


def _failed_answers(plane: Plane) -> list[str]:
    """The gateway's own lines on the requests replicas failed (printed whole: an assertion
    message is cut short): what a failure shows."""
    text = (plane.folder / "gateway.log").read_text(errors="replace")
    lines = [line for line in text.splitlines() if "replica_failed_answer" in line][:5]
    print("\n".join(["gateway:", *lines]) if lines else "")
    return lines
