"""Review findings 3, 4a, 4b and 6 on the FakeRuntime: a canary rejected and interrupted
while its candidate drains is not marked done; a failure after a canary or shadow routed
to the candidate takes the split away before the candidate goes; an `auto` model's quota
is checked again once its preparing decided its backend. No gateway runs: a canary step
without gateway reports has no candidate requests and fails at its deadline; a shadow
needs none and passes after its duration."""

import asyncio
import contextlib
import dataclasses
from typing import Any

from db import deployments, owner_quotas, tasks, traffic
from db.tasks import Task
from schemas.models import ModelSource
from schemas.tasks import DeploymentConfig, ReplicaState, TaskKind, TaskRequest, TaskStatus
from service.domain import task_requests
from service.domain.registration import register
from tests.worker.decisions import a_model, active_generation, deploy, run, states
from tests.worker.fake_runtime import FakeRuntime
from worker import traffic_phase
from worker.context import WorkerContext
from worker.jobs import run_task


async def _accept(ctx: WorkerContext, identifier: str, **config: Any) -> Task:
    req = TaskRequest(embedding_model_id=identifier,
                      config=DeploymentConfig.model_validate(config))
    task, _ = await task_requests.accept(ctx.pool, ctx.redis, TaskKind.deploy, req, None,
                                         settings=ctx.settings)
    return task


async def _until(check: Any, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not reached in time")


async def test_a_rejected_canary_interrupted_while_draining_fails_not_done(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """Review 3: `_reject` drains the candidate in phase `draining`; a worker stopping then
    used to finish the task done (as if past the switch), leaving the deployment
    in_progress."""
    # A long least drain (no gateway reports) holds the reject in `draining`.
    ctx = dataclasses.replace(fake_ctx, settings=fake_ctx.settings.model_copy(
        update={"routes_poll_s": 30.0}))
    model = await a_model(ctx, "rejected")
    assert (await deploy(ctx, model)).status == TaskStatus.done
    task = await _accept(ctx, model.identifier, rollout={
        "strategy": "canary", "canary": {"steps": [50], "step_s": 1, "max_step_s": 1}})
    job = asyncio.create_task(run_task(ctx, str(task.id)))

    async def draining() -> bool:
        current = await tasks.get(ctx.pool, task.id)
        return current is not None and current.phase == "draining"

    await _until(draining)
    job.cancel()  # the worker stops: run_task hands the task back
    with contextlib.suppress(asyncio.CancelledError):
        await job
    ended = await tasks.get(ctx.pool, task.id)
    assert ended is not None
    assert ended.status == TaskStatus.failed, (ended.status, ended.detail)
    assert "canary step 50 % failed" in (ended.detail or ""), ended.detail
    assert await active_generation(ctx, model) == 1
    deployment = await deployments.get(ctx.pool, model.id)
    assert deployment is not None and deployment.status == "complete"
    assert await states(ctx, model, 2) == [ReplicaState.failed]
    assert not fake_runtime.running(model.id, 2)


async def test_a_name_taken_at_the_switch_takes_the_split_away_first(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """Review 4a: the switch's transaction fails (the name was taken meanwhile) and its
    rollback restores the split; the candidate must not be removed while it carries it."""
    model = await a_model(fake_ctx, "renamed")
    other = await a_model(fake_ctx, "thief")
    assert (await deploy(fake_ctx, model)).status == TaskStatus.done
    task = await _accept(fake_ctx, model.identifier, deployment_name="wanted-name", rollout={
        "strategy": "shadow", "shadow": {"percent": 50, "duration_s": 1}})
    job = asyncio.create_task(run(fake_ctx, task))

    async def shadowing() -> bool:
        return await traffic.get_split(fake_ctx.pool, model.id) is not None

    await _until(shadowing)
    await deployments.begin_generation(fake_ctx.pool, other.id, "wanted-name")
    ended = await job
    assert ended.status == TaskStatus.failed
    assert "is taken by another model" in (ended.detail or ""), ended.detail
    assert await traffic.get_split(fake_ctx.pool, model.id) is None
    assert await active_generation(fake_ctx, model) == 1
    assert await states(fake_ctx, model, 2) == [ReplicaState.failed]
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.status == "complete"


async def test_an_unexpected_error_mid_shadow_abandons_and_fails_the_rollout(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime, monkeypatch: Any) -> None:
    """Review 4b: an error the rollout does not expect (a database or Redis failure) in the
    traffic phase used to leave the split, the candidate `starting` and the deployment
    in_progress (jobs.py only wrote "internal error")."""
    model = await a_model(fake_ctx, "crashing")
    assert (await deploy(fake_ctx, model)).status == TaskStatus.done
    calls = 0
    reports = traffic_phase._reports

    async def failing(ctx: WorkerContext) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:  # once the split is set
            raise RuntimeError("redis went away")
        return await reports(ctx)

    monkeypatch.setattr(traffic_phase, "_reports", failing)
    ended = await deploy(fake_ctx, model, rollout={
        "strategy": "shadow", "shadow": {"percent": 50, "duration_s": 5}})
    assert ended.status == TaskStatus.failed
    assert "internal error: RuntimeError: redis went away" in (ended.detail or "")
    assert await traffic.get_split(fake_ctx.pool, model.id) is None
    assert await active_generation(fake_ctx, model) == 1
    assert await states(fake_ctx, model, 2) == [ReplicaState.failed]
    assert not fake_runtime.running(model.id, 2)
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.status == "complete"


async def test_an_auto_export_that_falls_back_to_torch_is_checked_against_the_quota_again(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """Review 6: before preparing, an `auto` model counts at the ONNX replica's memory; its
    export fell back to torch (files not readable here), so its replicas would be placed
    at torch's: the quota is checked again and refuses before any replica starts."""
    settings = fake_ctx.settings
    model = await register(fake_ctx.pool, "alice", "auto-quota",
                           ModelSource(backend="auto", location="/nonexistent/model"),
                           "public")
    limit = settings.onnx_replica_memory_mb + 1
    assert limit < settings.replica_memory_mb
    await owner_quotas.set_overrides(fake_ctx.pool, model.owner_id, {"max_memory_mb": limit})
    ended = await deploy(fake_ctx, model)
    assert ended.status == TaskStatus.refused, (ended.status, ended.detail)
    assert ended.metadata["quota"] and "memory" in (ended.detail or ""), ended.detail
    assert ended.metadata["auto_backend"]["backend"] == "sentence-transformers"
    assert not fake_runtime.running(model.id)
    assert await active_generation(fake_ctx, model) is None
