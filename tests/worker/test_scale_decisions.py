"""The scale task's decisions (worker/scaling/scale_task.py) on the in-memory FakeRuntime:
up and down to the asked count, the oldest replicas kept, a failed scale-up leaves the
serving ones serving, and a redeploy starts at the scaled count. The same on real
replicas and under load: tests/worker/test_scale_task.py."""

from db import deployments
from schemas.tasks import ReplicaState, TaskStatus
from tests.worker.decisions import a_model, deploy, ready_refs, scale, states
from tests.worker.fake_runtime import FakeRuntime
from worker.context import WorkerContext


async def test_scale_up_then_down_reaches_each_count_and_keeps_the_oldest(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model)
    first = await ready_refs(fake_ctx, model.id, 1)
    up = await scale(fake_ctx, model, 3)
    assert up.status == TaskStatus.done, up.detail
    assert (up.metadata["replicas_before"], up.metadata["replicas_current"]) == (1, 3)
    assert len(await ready_refs(fake_ctx, model.id, 1)) == 3
    assert len(fake_runtime.running(model.id, 1)) == 3
    down = await scale(fake_ctx, model, 1)
    assert down.status == TaskStatus.done, down.detail
    assert down.metadata["replicas_current"] == 1
    assert await ready_refs(fake_ctx, model.id, 1) == first, "the oldest replica stays"
    assert {r.ref for r in fake_runtime.running(model.id)} == first
    assert await states(fake_ctx, model, 1) == sorted([ReplicaState.ready]
                                                      + [ReplicaState.stopped] * 2)
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.desired_replicas == 1


async def test_a_scale_up_whose_replicas_never_get_ready_keeps_the_serving_ones(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    serving = await ready_refs(fake_ctx, model.id, 1)
    fake_runtime.on_start = lambda spec: "never_ready"
    task = await scale(fake_ctx, model, 4)
    assert task.status == TaskStatus.failed
    assert "did not become healthy" in (task.detail or "")
    assert await ready_refs(fake_ctx, model.id, 1) == serving
    assert {r.ref for r in fake_runtime.running(model.id)} == serving


async def test_a_redeploy_starts_at_the_scaled_count(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model)
    await scale(fake_ctx, model, 3)
    task = await deploy(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    assert task.metadata["generation"] == 2 and task.metadata["replicas_current"] == 3
    assert len(fake_runtime.running(model.id, 2)) == 3
    assert not fake_runtime.running(model.id, 1)
    named = await deploy(fake_ctx, model, replicas=2)  # a deploy naming its count keeps it
    assert named.metadata["replicas_current"] == 2


async def test_a_scale_to_zero_stops_every_replica_and_keeps_the_generation(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    task = await scale(fake_ctx, model, 0)
    assert task.status == TaskStatus.done, task.detail
    assert task.metadata["replicas_current"] == 0
    assert not fake_runtime.running(model.id)
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.active_generation == 1, "still deployed"
