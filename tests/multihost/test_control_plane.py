"""Issue 15, must-show 3: the control plane across hosts.

API, two workers and a gateway in four network namespaces, Postgres and Redis in a fifth
(tests/multihost/conftest.py). Each worker runs the process runtime: its replicas listen
in its own namespace and are advertised on its address, and the gateway reaches them
across the bridge. 20 deploys over 5 models complete, processed by both workers; then a
worker is killed with SIGKILL mid-rollout: the task completes through the other worker,
the model serves one generation, and once the killed host's worker is back no replica is
left that no serving generation owns, on either host.
"""

import asyncio
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp
import pytest

from db import replicas, tasks, users
from schemas.models import ModelSource
from schemas.tokens import issue_user_token
from service.domain.accounts import hash_password
from service.domain.registration import register
from tests.conftest import TEST_SECRET_KEY, bearer
from tests.multihost.conftest import Plane
from worker.runtimes.process import ProcessRuntime

MODELS = 5
ROUNDS = 4  # 5 models x 4 rounds = 20 deploys
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def _deploy(http: aiohttp.ClientSession, plane: Plane, name: str,
                  headers: dict[str, str]) -> str:
    async with http.post(f"{plane.api}/deploy", json={"embedding_model_id": f"alice/{name}"},
                         headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["task_id"])


async def _wait(http: aiohttp.ClientSession, plane: Plane, task_id: str,
                headers: dict[str, str], timeout_s: float = 90) -> dict[str, Any]:
    """Poll the deploy task through the API until it is terminal; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(f"{plane.api}/deploy/{task_id}", headers=headers) as resp:
            task: dict[str, Any] = await resp.json()
            assert resp.status == 200, task
        if task["status"] not in ("pending", "processing"):
            return task
        assert time.monotonic() < deadline, f"deploy {task_id} still {task['status']}"
        await asyncio.sleep(0.1)


async def _headers(plane: Plane) -> dict[str, str]:
    admin = await users.create(plane.pool, username="admin", is_admin=True,
                               password_hash=hash_password("admin-password-123"))
    return bearer(issue_user_token(TEST_SECRET_KEY, admin.id))


def _worker_of(plane: Plane, worker_id: str | None) -> str:
    """Which of the plane's workers a task's worker id (`host:pid:…`) names."""
    pid = int((worker_id or "").split(":")[1])
    return next(name for name, proc in plane.procs.items() if proc.pid == pid)


async def _embed(http: aiohttp.ClientSession, plane: Plane, name: str) -> str:
    """One request through the gateway; the replica that answered."""
    async with http.post(f"{plane.gateway}/serve/{name}/embed",
                         json={"inputs": "across hosts"}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Greenroom-Replica"]


async def _owned_generations(plane: Plane) -> dict[UUID, set[int]]:
    """Each deployment's generations that own replicas: the active one and, while its warm
    window is open (issue 26, `keep_previous_s`), the previous one kept for a rollback."""
    rows = await plane.pool.fetch(
        "SELECT model_id, active_generation, previous_generation, "
        "previous_until > now() AS warm FROM deployments")
    return {r["model_id"]: {g for g in (r["active_generation"],
                                        r["previous_generation"] if r["warm"] else None)
                            if g is not None} for r in rows}


async def _unowned(plane: Plane) -> list[Any]:
    """Running replica processes on either worker host that no ready row of an owned
    generation (active, or warm inside its window) owns, and live rows of generations that
    are neither."""
    owned = await _owned_generations(plane)
    rows = await plane.pool.fetch("SELECT id, model_id, generation, state FROM replicas "
                                  "WHERE state IN ('starting', 'ready', 'draining')")
    kept = {r["id"] for r in rows if r["state"] == "ready"
            and r["generation"] in owned.get(r["model_id"], set())}
    stray: list[Any] = []
    for name in ("w1", "w2"):
        for info in await ProcessRuntime(plane.settings[name]).list():
            if info.running and info.replica_id not in kept:
                stray.append((name, info.generation, str(info.replica_id)))
    stray += [{k: r[k] for k in ("model_id", "generation", "state")} for r in rows
              if r["generation"] not in owned.get(r["model_id"], set())]
    return stray


async def _until_settled(plane: Plane, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        stray = await _unowned(plane)
        if not stray:
            return
        assert time.monotonic() < deadline, f"replicas nobody owns: {stray}"
        await asyncio.sleep(0.3)


async def test_twenty_deploys_across_hosts_then_kill_9(plane: Plane) -> None:
    headers = await _headers(plane)
    names = [f"mh-{i}" for i in range(MODELS)]
    for name in names:
        await register(plane.pool, "alice", name, ModelSource(backend="hashing", dimension=64),
                       "public")
    started = time.monotonic()
    by_worker: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for _ in range(ROUNDS):  # one deploy per model at a time: a newer one cancels older
            ids = [await _deploy(http, plane, name, headers) for name in names]
            done = await asyncio.gather(*(_wait(http, plane, t, headers)
                                          for t in ids))
            assert [t["status"] for t in done] == ["done"] * MODELS, done
            for task_id in ids:
                row = await tasks.get(plane.pool, UUID(task_id))
                assert row is not None
                by_worker[_worker_of(plane, row.worker_id)] += 1
        deploy_s = time.monotonic() - started
        assert set(by_worker) == {"w1", "w2"}, by_worker

        # Every model answers through the gateway from a replica on a worker host's address.
        hosts = {plane.hosts[w].address: w for w in ("w1", "w2")}
        placed: Counter[str] = Counter()
        for name in names:
            replica_id = await _embed(http, plane, name)
            replica = (await replicas.get_many(plane.pool, [UUID(replica_id)]))[0]
            placed[hosts[urlsplit(replica.endpoint or "").hostname or ""]] += 1
        await _until_settled(plane, timeout_s=15)

        # kill -9 the worker holding a rollout mid-way; the other finishes it.
        await register(plane.pool, "alice", "mh-slow",
                       ModelSource(backend="hashing", dimension=64, startup_delay_s=2.0),
                       "public")
        task_id = await _deploy(http, plane, "mh-slow", headers)
        row = await tasks.get(plane.pool, UUID(task_id))
        deadline = time.monotonic() + 20
        while row is not None and row.phase not in ("starting_replicas", "health_checking"):
            assert time.monotonic() < deadline, f"never mid-rollout: {row}"
            await asyncio.sleep(0.05)
            row = await tasks.get(plane.pool, UUID(task_id))
        assert row is not None
        victim = _worker_of(plane, row.worker_id)
        killed_phase = row.phase
        plane.kill(victim)
        finished = await _wait(http, plane, task_id, headers)
        assert finished["status"] == "done", finished
        final = await tasks.get(plane.pool, UUID(task_id))
        assert final is not None and final.attempts == 2
        survivor = _worker_of(plane, final.worker_id)
        assert survivor != victim
        serving = await _embed(http, plane, "mh-slow")
        # The killed worker's half-made replica still runs on its host until a worker runs
        # there again (nothing else can stop a process there); its row is already failed.
        plane.start_worker(victim)
        await _until_settled(plane, timeout_s=30)
        live = await replicas.list_serving(plane.pool)
        assert UUID(serving) in {r.id for r in live}
        assert len({r.generation for r in live if r.model_id == final.model_id}) == 1
    print(f"\nmultihost: {MODELS * ROUNDS} deploys over {MODELS} models in {deploy_s:.1f}s, "
          f"by worker {dict(by_worker)}; gateway reached replicas on {dict(placed)}; "
          f"kill -9 of {victim} at {killed_phase}: task done by {survivor} on attempt 2, "
          f"no replica left unowned")
