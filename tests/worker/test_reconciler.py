"""The reconciler records replicas that no longer run: a worker killed between removing a
draining replica and recording it (tests/chaos/test_worker_kill.py met one) left a row
`draining` forever, which quotas, the console and the routes' readers counted as live."""

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg

from db import replicas, tasks
from schemas.settings import Settings
from schemas.tasks import ReplicaState
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from worker import health
from worker.context import WorkerContext
from worker.reconciler import forget_vanished
from worker.runtimes.base import ReplicaSpec
from worker.runtimes.process import ProcessRuntime


async def _row(pool: asyncpg.Pool, model_id: UUID, generation: int, state: ReplicaState,
               ref: str | None = None, endpoint: str | None = None) -> UUID:
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model_id,
                          generation=generation, task_id=None, runtime="process")
    if ref is not None:
        await replicas.set_started(pool, replica_id, ref, endpoint or "http://127.0.0.1:9")
    await replicas.set_state(pool, [replica_id], state)
    return replica_id


async def _states(pool: asyncpg.Pool, ids: list[UUID]) -> list[str]:
    by_id = {r.id: r.state for r in await replicas.get_many(pool, ids)}
    return [by_id[i] for i in ids]


async def test_rows_of_replicas_that_no_longer_run_are_recorded_stopped(
        pool: asyncpg.Pool, settings: Settings, hashing_model: Callable[..., Any],
        clean: None) -> None:
    # `clean`: the pass judges every row of the database, and the worker's earlier tests
    # may have left some (CI once counted 4 for 3 after the tests moved by part).
    model_id = await hashing_model("vanished")
    busy_model = await hashing_model("busy")
    await pool.execute("INSERT INTO deployments (model_id, name, status, active_generation, "
                       "last_generation, config) VALUES ($1, 'vanished', 'complete', 2, 2, "
                       "'{}')", model_id)
    runtime = ProcessRuntime(settings)
    async with aiohttp.ClientSession() as http:
        # A draining replica of generation 1 that still runs: its drain is not over.
        spec = ReplicaSpec(replica_id=uuid4(), model_id=model_id, generation=1,
                           model_identifier="alice/vanished", task_id=None,
                           source={"backend": "hashing", "dimension": 384})
        await replicas.insert(pool, replica_id=spec.replica_id, model_id=model_id,
                              generation=1, task_id=None, runtime="process")
        alive = await runtime.start(spec)
        await health.wait_ready(runtime, http, alive, asyncio.get_running_loop().time() + 60)
        await replicas.set_started(pool, spec.replica_id, alive.runtime_ref, alive.endpoint)
        await replicas.set_state(pool, [spec.replica_id], ReplicaState.draining)
        ctx = WorkerContext(settings=settings, pool=pool, redis=None,  # type: ignore[arg-type]
                            runtime=runtime, http=http, worker_id="t")
        gone_draining = await _row(pool, model_id, 1, ReplicaState.draining, "gone-1")
        gone_old_ready = await _row(pool, model_id, 1, ReplicaState.ready, "gone-2")
        never_started = await _row(pool, model_id, 2, ReplicaState.starting)
        serving = await _row(pool, model_id, 2, ReplicaState.ready, "gone-3")
        # A model a task is working on: its rows are the task's, whatever runs.
        task = await tasks.insert(pool, task_id=uuid4(), kind="deploy", model_id=busy_model,
                                  request={}, request_hash="x", idempotency_key=None,
                                  created_by=None, metadata={}, enqueued=False)
        await pool.execute("UPDATE tasks SET status = 'processing', worker_id = 't' "
                           "WHERE id = $1", task.id)
        busy_row = await _row(pool, busy_model, 1, ReplicaState.starting)
        try:
            # Fresh rows are not judged yet.
            assert await forget_vanished(ctx, await runtime.list()) == 0
            # Unchanged for longer than VANISHED_AFTER_S: now each is judged.
            await pool.execute("UPDATE replicas SET updated_at = now() - interval '1 minute'")
            assert await forget_vanished(ctx, await runtime.list()) == 3
            assert await _states(pool, [gone_draining, gone_old_ready, never_started]) == [
                "stopped", "stopped", "failed"]
            # Left alone: a replica that runs, the serving generation (the repair's), and
            # a busy model's.
            assert await _states(pool, [spec.replica_id, serving, busy_row]) == [
                "draining", "ready", "starting"]
            assert await forget_vanished(ctx, await runtime.list()) == 0
        finally:
            await runtime.stop(alive.runtime_ref, 2)
            await runtime.remove(alive.runtime_ref)
            await runtime.close()
