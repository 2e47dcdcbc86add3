"""Revisions and rollback on the FakeRuntime (issue 26): a generation pins its revision and
every later start of it (a repair) loads that revision; after a flip the previous
generation stays warm, the reconciler keeps it, and a rollback inside the window is a route
flip; past the window a rollback is a green deploy of the target's revision and config; a
warm generation counts toward the owner's quota and the refusal says so."""

import asyncio
from typing import Any

from db import deployments, generations, models, owner_quotas, revisions, tasks
from db.models import Model
from db.tasks import Task
from schemas.revisions import source_digest
from schemas.task_payloads import RollbackPayload
from schemas.tasks import DeploymentConfig, ReplicaState, TaskKind, TaskRequest, TaskStatus
from service.domain import task_requests
from tests.worker.decisions import a_model, active_generation, deploy, run, states
from tests.worker.fake_runtime import FakeRuntime
from worker import reconciler, retention, warm
from worker.context import WorkerContext
from worker.repair import replace_crashed

WARM = {"rollout": {"keep_previous_s": 300}}


async def rollback(ctx: WorkerContext, model: Model, generation: int | None = None) -> Task:
    req = TaskRequest(embedding_model_id=model.identifier, config=DeploymentConfig())
    payload = RollbackPayload(embedding_model_id=model.identifier, generation=generation)
    task, _ = await task_requests.accept(ctx.pool, ctx.redis, TaskKind.rollback, req, None,
                                         settings=ctx.settings, payload=payload)
    return await run(ctx, task)


async def change_source(ctx: WorkerContext, model: Model, source: dict[str, Any]) -> Model:
    """What PATCH /api/v2/models/{model} does with a new source (service/domain/revisions.py)."""
    await revisions.for_source(ctx.pool, model.id, source, source_digest(source))
    await models.update_source(ctx.pool, model.id, source)
    found = await models.get(ctx.pool, model.id)
    assert found is not None
    return found


async def test_a_repair_starts_the_generations_pinned_revision_not_the_models_new_one(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    first = await deploy(fake_ctx, model, replicas=2)
    assert first.metadata["revision"] == "r1", first.metadata
    v1 = dict(model.source)
    await change_source(fake_ctx, model, {"backend": "hashing", "dimension": 16})
    listed = await revisions.list_for_model(fake_ctx.pool, model.id)
    assert [r.id for r in listed] == ["r2", "r1"] and listed[0].digest != listed[1].digest

    dead = fake_runtime.running(model.id, 1)[0]
    fake_runtime.crash(dead.ref)
    assert await replace_crashed(fake_ctx, set()) == 1
    serving = fake_runtime.running(model.id, 1)
    assert len(serving) == 2 and dead not in serving
    assert all(r.spec.source == v1 for r in serving), [r.spec.source for r in serving]

    # r2's vectors are another space: the compatibility gate lets them through only so.
    second = await deploy(fake_ctx, model, replicas=1, rollout={"compatibility": "new-space"})
    assert second.metadata["revision"] == "r2"
    assert [r.spec.source["dimension"] for r in fake_runtime.running(model.id, 2)] == [16]


async def test_a_rollback_inside_the_window_is_a_route_flip(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2, **WARM)
    await deploy(fake_ctx, model, replicas=2, **WARM)
    assert await active_generation(fake_ctx, model) == 2
    # Warm: ready, running, not routed, and no reconciler takes them for orphans.
    assert await states(fake_ctx, model, 1) == [ReplicaState.ready] * 2
    await reconciler.reconcile_once(fake_ctx)
    assert len(fake_runtime.running(model.id, 1)) == 2
    routes = {r.model_id: r for r in await deployments.routes(fake_ctx.pool)}
    assert routes[model.id].generation == 2 and routes[model.id].revision == 1

    started = len(fake_runtime.replicas)
    task = await rollback(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    meta = task.metadata
    assert meta["mode"] == "flip" and meta["generation"] == 1 and meta["from_generation"] == 2
    assert meta["flip_ms"] <= 100, meta
    assert len(fake_runtime.replicas) == started, "a flip starts no replica"
    assert await active_generation(fake_ctx, model) == 1
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.previous_generation == 2
    # A roll forward is a flip too.
    forward = await rollback(fake_ctx, model, 2)
    assert forward.metadata["mode"] == "flip" and await active_generation(fake_ctx, model) == 2


async def test_past_the_window_a_rollback_is_a_green_deploy_of_the_pinned_revision(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=1, memory=256,
                 rollout={"keep_previous_s": 0.2})
    model = await change_source(fake_ctx, model, {"backend": "hashing", "dimension": 16})
    await deploy(fake_ctx, model, replicas=1,
                 rollout={"keep_previous_s": 0.2, "compatibility": "new-space"})
    await asyncio.sleep(0.3)
    assert await warm.expire(fake_ctx) == 1
    assert await states(fake_ctx, model, 1) == [ReplicaState.stopped]
    assert not fake_runtime.running(model.id, 1)

    task = await rollback(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    assert task.metadata["generation"] == 3 and task.metadata["rollback_of"] == 1
    assert task.metadata["revision"] == "r1"
    # Back to r1's vectors across the dimension change: the gate records, never refuses.
    assert task.metadata["rollout"]["compatibility"]["verdict"] == "new-space"
    new, = fake_runtime.running(model.id, 3)
    assert new.spec.source["dimension"] == 8 and new.spec.memory_mb == 256
    pinned = await generations.get(fake_ctx.pool, model.id, 3)
    assert pinned is not None and pinned.revision == 1 and pinned.rollback_of == 1


async def test_a_rollback_to_the_serving_or_an_unknown_generation_fails_saying_why(
        fake_ctx: WorkerContext) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model)
    alone = await rollback(fake_ctx, model)
    assert alone.status == TaskStatus.failed and "no generation served before" in (
        alone.detail or "")
    same = await rollback(fake_ctx, model, 1)
    assert same.status == TaskStatus.failed and "already serving" in (same.detail or "")
    unknown = await rollback(fake_ctx, model, 9)
    assert unknown.status == TaskStatus.failed and "no pinned revision" in (unknown.detail or "")


async def test_warm_replicas_count_toward_the_quota_and_the_refusal_says_so(
        fake_ctx: WorkerContext) -> None:
    model = await a_model(fake_ctx)
    owner = model.owner_id
    await owner_quotas.set_overrides(fake_ctx.pool, owner, {"max_replicas": 3})
    await deploy(fake_ctx, model, replicas=1, **WARM)
    await deploy(fake_ctx, model, replicas=1, **WARM)
    assert (await owner_quotas.warm_replicas(fake_ctx.pool, owner, 2048))[0] == 1
    # 3 replicas fit the quota of 3 alone; beside the warm one they do not.
    refused = await deploy(fake_ctx, model, replicas=3, **WARM)
    assert refused.status == TaskStatus.refused, refused.detail
    assert "warm replica(s)" in (refused.detail or ""), refused.detail
    ended = await tasks.get(fake_ctx.pool, refused.id)
    assert ended is not None and ended.metadata["quota"]["quota"] == "replicas"


async def test_an_uploaded_revisions_files_go_only_when_nothing_pins_them(
        fake_ctx: WorkerContext) -> None:
    model = await a_model(fake_ctx)
    store = fake_ctx.settings.model_store_dir.resolve()
    folders = {}
    for number in (1, 2, 3):
        folder = folders[number] = store / str(model.id) / str(number)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        await revisions.insert(fake_ctx.pool, model.id, number, "upload",
                               {"backend": "sentence-transformers", "location": str(folder)},
                               f"sha256:{number}", 2)
    # Generation 1 served r1 (a rollback target); r2 nothing pins; r3 is the newest.
    await generations.pin(fake_ctx.pool, model.id, 1, 1, {})
    await generations.mark_served(fake_ctx.pool, model.id, 1)
    assert await retention.prune_revision_files(fake_ctx) == 1
    assert folders[1].is_dir() and not folders[2].exists() and folders[3].is_dir()
    gone = await revisions.get(fake_ctx.pool, model.id, 2)
    assert gone is not None and gone.files_removed_at is not None
    assert await retention.prune_revision_files(fake_ctx) == 0
