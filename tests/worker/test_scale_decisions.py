"""The scale task's decisions (worker/scaling/scale_task.py) on the in-memory FakeRuntime:
up and down to the asked count, the oldest replicas kept, a failed scale-up leaves the
serving ones serving, and a redeploy starts at the scaled count. The same on real
replicas and under load: tests/worker/test_scale_task.py."""

import time

import pytest

from db import deployments, events, tasks
from db.models import Model
from db.tasks import Task
from schemas.gateway import GatewayReport
from schemas.queue import GATEWAY_KEY_PREFIX, LOAD_CHANNEL
from schemas.tasks import DeploymentConfig, ReplicaState, TaskStatus
from tests.worker.decisions import a_model, deploy, ready_refs, run, scale, states
from tests.worker.fake_runtime import FakeRuntime
from worker.context import WorkerContext
from worker.scaling.autoscaler import create_scale_task
from worker.scaling.kpa import Decision, Knobs

TO_ZERO = {"autoscaling_enabled": True, "autoscaling_min": 0, "autoscaling_max": 2}


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


async def _gateway_holds(ctx: WorkerContext, model: Model, held: int) -> None:
    """What a gateway writes while it holds `held` requests for the model (gateway/hold.py)."""
    report = GatewayReport(gateway_id="g-held", at=time.time(), generations={str(model.id): 1},
                           held={str(model.id): held} if held else {})
    await ctx.redis.set(GATEWAY_KEY_PREFIX + report.gateway_id, report.model_dump_json(), ex=10)


async def _autoscaler_scales_to_zero(ctx: WorkerContext, model: Model) -> Task:
    """The autoscaler's decision 1 → 0, as its task (worker/scaling/autoscaler.py), run."""
    task_id = await create_scale_task(ctx, model.id, Decision(0, 1, 0.0, 3.0, False),
                                      Knobs.of(DeploymentConfig.model_validate(TO_ZERO)))
    task = await tasks.get(ctx.pool, task_id)
    assert task is not None
    return await run(ctx, task)


async def test_a_request_held_during_the_scale_to_zero_calls_it_off(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """Issue 28: the replica still drains (it runs) when a gateway holds a request for the
    model: the scale task puts it back instead of stopping it; nothing starts."""
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, **TO_ZERO)
    serving = await ready_refs(fake_ctx, model.id, 1)
    await _gateway_holds(fake_ctx, model, held=1)
    task = await _autoscaler_scales_to_zero(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    assert task.metadata["replicas_current"] == 1
    assert await ready_refs(fake_ctx, model.id, 1) == serving, "the same replica serves"
    assert {r.ref for r in fake_runtime.running(model.id)} == serving
    assert len(fake_runtime.replicas) == 1, "no replica was started"
    said = [e.message for e in await events.list_for_task(fake_ctx.pool, task.id)]
    assert any("scale to zero called off" in m for m in said), said
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.desired_replicas == 1


async def test_a_request_held_once_the_replica_is_stopping_starts_one_in_the_same_task(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28: a request that arrives while the last replica is being stopped (too late
    to call off) gets a replica started by the scale task itself, not by a later decision
    and a new task."""
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, **TO_ZERO)
    stopped = await ready_refs(fake_ctx, model.id, 1)
    stop = fake_runtime.stop

    async def stop_as_a_request_arrives(runtime_ref: str, grace_s: float) -> None:
        await _gateway_holds(fake_ctx, model, held=1)
        await stop(runtime_ref, grace_s)

    monkeypatch.setattr(fake_runtime, "stop", stop_as_a_request_arrives)
    task = await _autoscaler_scales_to_zero(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    assert task.metadata["replicas_current"] == 1
    serving = await ready_refs(fake_ctx, model.id, 1)
    assert serving and serving.isdisjoint(stopped), "the old one stopped, a new one serves"
    assert {r.ref for r in fake_runtime.running(model.id)} == serving
    said = [e.message for e in await events.list_for_task(fake_ctx.pool, task.id)]
    assert any("one replica started again" in m for m in said), said
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.desired_replicas == 1


async def test_with_nothing_held_the_autoscalers_scale_to_zero_stops_the_replica(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, **TO_ZERO)
    await _gateway_holds(fake_ctx, model, held=0)
    task = await _autoscaler_scales_to_zero(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    assert task.metadata["replicas_current"] == 0
    assert not fake_runtime.running(model.id)
    assert await states(fake_ctx, model, 1) == [ReplicaState.stopped]


async def test_a_scale_to_zero_that_ends_with_requests_held_wakes_the_autoscalers(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """The owner's scale to zero is not called off (the owner asked for it), but requests
    held when it ends are announced on LOAD_CHANNEL: a decider waiting for the task to end
    decides now, not at its next tick."""
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, **TO_ZERO)
    await _gateway_holds(fake_ctx, model, held=2)
    async with fake_ctx.redis.pubsub() as pubsub:
        await pubsub.subscribe(LOAD_CHANNEL)
        await pubsub.get_message(timeout=1)  # the subscription's confirmation
        task = await scale(fake_ctx, model, 0)
        assert task.status == TaskStatus.done, task.detail
        assert not fake_runtime.running(model.id)
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert message is not None and str(model.id) in message["data"].decode()
        await _gateway_holds(fake_ctx, model, held=0)
        await deploy(fake_ctx, model, **TO_ZERO)
        assert (await scale(fake_ctx, model, 0)).status == TaskStatus.done
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5) is None, \
            "nothing held: no announcement"
