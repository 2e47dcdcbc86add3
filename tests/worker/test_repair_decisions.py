"""The repair's decisions (worker/repair.py) on the in-memory FakeRuntime: a crashed
serving replica is replaced in its generation, a replacement that never gets ready leaves
the deployment degraded, and a model a task is working on is left to that task. On real
replicas: tests/chaos/test_recovery.py, tests/worker/test_swarm_runtime.py."""

from db import deployments, events
from schemas.tasks import DeploymentStatus, ReplicaState
from tests.worker.decisions import a_model, deploy, ready_refs, states
from tests.worker.fake_runtime import FakeRuntime
from worker.context import WorkerContext
from worker.repair import replace_crashed


async def test_a_crashed_replica_is_replaced_in_its_generation(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    crashed, kept = sorted(await ready_refs(fake_ctx, model.id, 1))
    fake_runtime.crash(crashed)
    assert await replace_crashed(fake_ctx, set()) == 1
    now = await ready_refs(fake_ctx, model.id, 1)
    assert kept in now and crashed not in now and len(now) == 2
    assert crashed in fake_runtime.removed
    assert len(fake_runtime.running(model.id, 1)) == 2
    assert await states(fake_ctx, model, 1) == sorted([ReplicaState.failed]
                                                      + [ReplicaState.ready] * 2)
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.status == DeploymentStatus.complete
    said = [e.message for e in await events.list_recent(fake_ctx.pool, model.id)]
    assert any("was killed (exit code 137" in m for m in said), said
    assert any("replaced crashed replica" in m for m in said), said
    assert await replace_crashed(fake_ctx, set()) == 0, "nothing more to replace"


async def test_a_replacement_that_never_gets_ready_leaves_the_deployment_degraded(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    crashed, kept = sorted(await ready_refs(fake_ctx, model.id, 1))
    fake_runtime.crash(crashed)
    fake_runtime.on_start = lambda spec: "never_ready"
    assert await replace_crashed(fake_ctx, set()) == 0
    assert await ready_refs(fake_ctx, model.id, 1) == {kept}
    assert {r.ref for r in fake_runtime.running(model.id)} == {kept}
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.status == DeploymentStatus.degraded
    said = [e.message for e in await events.list_recent(fake_ctx.pool, model.id)]
    assert any("replacement replica failed" in m for m in said), said


async def test_a_model_a_task_works_on_is_left_to_that_task(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model)
    (crashed,) = await ready_refs(fake_ctx, model.id, 1)
    fake_runtime.crash(crashed)
    assert await replace_crashed(fake_ctx, {model.id}) == 0
    assert await ready_refs(fake_ctx, model.id, 1) == {crashed}, "untouched"
    assert await replace_crashed(fake_ctx, set()) == 1, "once the task is over"
