"""The rollout's decisions (worker/rollout.py) on the in-memory FakeRuntime: a new
generation serves only once every replica is healthy, and any failure before the switch
leaves the old generation serving and removes the new one. The same claims on real
replicas: tests/e2e/test_core_loop.py, tests/worker/test_rollout_failures_docker.py."""

from schemas.tasks import ReplicaState, TaskStatus
from tests.worker.decisions import a_model, active_generation, delete, deploy, ready_refs, states
from tests.worker.fake_runtime import FakeRuntime
from worker.context import WorkerContext


async def test_a_deploy_serves_its_generation_once_every_replica_is_healthy(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    task = await deploy(fake_ctx, model, replicas=2)
    assert task.status == TaskStatus.done, task.detail
    assert task.metadata["generation"] == 1 and task.metadata["replicas_current"] == 2
    assert await active_generation(fake_ctx, model) == 1
    assert await states(fake_ctx, model, 1) == [ReplicaState.ready] * 2
    assert {r.ref for r in fake_runtime.running(model.id, 1)} \
        == await ready_refs(fake_ctx, model.id, 1)


async def test_a_redeploy_switches_then_removes_the_old_generation(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    old = {r.ref for r in fake_runtime.running(model.id, 1)}
    task = await deploy(fake_ctx, model, replicas=2)
    assert task.status == TaskStatus.done, task.detail
    assert await active_generation(fake_ctx, model) == 2
    assert await states(fake_ctx, model, 1) == [ReplicaState.stopped] * 2
    assert old <= set(fake_runtime.removed) and not fake_runtime.running(model.id, 1)
    assert len(fake_runtime.running(model.id, 2)) == 2


async def test_a_generation_that_never_becomes_ready_leaves_the_old_one_serving(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model)
    serving = await ready_refs(fake_ctx, model.id, 1)
    fake_runtime.on_start = lambda spec: "never_ready"
    task = await deploy(fake_ctx, model, deploy_timeout_s=0.5)
    assert task.status == TaskStatus.failed
    assert "did not become healthy before the deploy deadline (0.5s)" in (task.detail or "")
    assert await active_generation(fake_ctx, model) == 1
    assert await ready_refs(fake_ctx, model.id, 1) == serving
    assert {r.ref for r in fake_runtime.running(model.id)} == serving
    assert await states(fake_ctx, model, 2) == [ReplicaState.failed]


async def test_a_replica_that_exits_at_start_fails_the_rollout_with_its_log(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model)
    serving = await ready_refs(fake_ctx, model.id, 1)
    fake_runtime.on_start = lambda spec: "exits"
    task = await deploy(fake_ctx, model, replicas=2)
    assert task.status == TaskStatus.failed
    assert "exited with code 3 before becoming healthy" in (task.detail or "")
    assert "the model failed to load" in (task.detail or ""), "the replica's log tail"
    assert await active_generation(fake_ctx, model) == 1
    assert {r.ref for r in fake_runtime.running(model.id)} == serving
    assert not fake_runtime.running(model.id, 2)
    assert await states(fake_ctx, model, 2) == [ReplicaState.failed] * 2


async def test_a_start_the_runtime_refuses_fails_the_rollout_and_keeps_the_old(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model)
    serving = await ready_refs(fake_ctx, model.id, 1)
    fake_runtime.on_start = lambda spec: "refused"
    task = await deploy(fake_ctx, model)
    assert task.status == TaskStatus.failed
    assert "could not start replica: the fake runtime refused" in (task.detail or "")
    assert await active_generation(fake_ctx, model) == 1
    assert {r.ref for r in fake_runtime.running(model.id)} == serving


async def test_a_first_deploy_that_fails_leaves_nothing_serving_or_running(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    fake_runtime.on_start = lambda spec: "never_ready"
    task = await deploy(fake_ctx, model, replicas=2, deploy_timeout_s=0.5)
    assert task.status == TaskStatus.failed
    assert await active_generation(fake_ctx, model) is None
    assert not fake_runtime.replicas


async def test_a_delete_removes_every_replica_and_the_route(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    task = await delete(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    assert task.metadata["removed_replicas"] == 2
    assert await active_generation(fake_ctx, model) is None
    assert not fake_runtime.replicas
    assert await states(fake_ctx, model, 1) == [ReplicaState.stopped] * 2
