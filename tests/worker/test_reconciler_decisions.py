"""The reconciler's decisions (worker/reconciler.py) on the in-memory FakeRuntime: a
replica nobody owns is removed, the serving generation and a busy model's replicas never
are, and one pass repairs a crash and removes an orphan together. On real replicas:
tests/worker/test_reconciler.py, tests/chaos/test_worker_kill.py, test_swarm_runtime.py."""

from uuid import uuid4

from db import replicas
from schemas.tasks import ReplicaState
from tests.worker.decisions import a_model, deploy, ready_refs
from tests.worker.fake_runtime import FakeRuntime
from worker.context import WorkerContext
from worker.reconciler import reconcile_once, remove_orphans


async def test_replicas_no_row_or_serving_generation_owns_are_removed(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    serving = await ready_refs(fake_ctx, model.id, 1)
    no_row = fake_runtime.plant(model.id, 1)  # a worker died before recording it
    other_model = fake_runtime.plant(uuid4(), 1)  # a model the database never had
    old_id = uuid4()  # an old generation's row left `ready` by a dead rollout
    await replicas.insert(fake_ctx.pool, replica_id=old_id, model_id=model.id, generation=0,
                          task_id=None, runtime="fake")
    old = fake_runtime.plant(model.id, 0, old_id)
    await replicas.set_started(fake_ctx.pool, old_id, old, "http://127.0.0.1:9")
    await replicas.set_state(fake_ctx.pool, [old_id], ReplicaState.ready)

    assert await remove_orphans(fake_ctx, await fake_runtime.list()) == 3
    assert {no_row, other_model, old} <= set(fake_runtime.removed)
    assert {r.ref for r in fake_runtime.running()} == serving, "the serving ones stay"
    (row,) = await replicas.get_many(fake_ctx.pool, [old_id])
    assert row.state == ReplicaState.stopped
    assert await remove_orphans(fake_ctx, await fake_runtime.list()) == 0


async def test_a_busy_models_replicas_are_never_judged_orphans(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model)
    planted = fake_runtime.plant(model.id, 2)  # as a rollout's new generation, recorded
    replica_id = fake_runtime.replicas[planted].spec.replica_id
    await replicas.insert(fake_ctx.pool, replica_id=replica_id, model_id=model.id,
                          generation=2, task_id=None, runtime="fake")
    await fake_ctx.pool.execute("UPDATE tasks SET status = 'processing' WHERE model_id = $1",
                                model.id)  # the model's task is running
    assert await remove_orphans(fake_ctx, await fake_runtime.list()) == 0
    assert planted in fake_runtime.replicas
    await fake_ctx.pool.execute("UPDATE tasks SET status = 'done' WHERE model_id = $1",
                                model.id)  # the task is over and never switched to 2
    assert await remove_orphans(fake_ctx, await fake_runtime.list()) == 1
    assert planted in fake_runtime.removed


async def test_one_pass_replaces_a_crash_and_removes_an_orphan(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    crashed, kept = sorted(await ready_refs(fake_ctx, model.id, 1))
    fake_runtime.crash(crashed, exit_code=1)
    orphan = fake_runtime.plant(model.id, 1)
    await reconcile_once(fake_ctx)
    now = await ready_refs(fake_ctx, model.id, 1)
    assert kept in now and crashed not in now and len(now) == 2
    assert orphan in fake_runtime.removed
    assert {r.ref for r in fake_runtime.running()} == now
    actions = fake_ctx.metrics.reconciler_actions
    assert actions.labels("replace_crashed_replica")._value.get() == 1
    assert actions.labels("remove_orphan_replica")._value.get() == 1
