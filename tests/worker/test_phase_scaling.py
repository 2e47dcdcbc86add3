"""Issue 27, item 3: autoscaling during a canary or shadow scales each generation on its
own share, and quotas count both (worker/scaling/phase_scaling.py).

The pure parts first (which replicas take a generation's share, the quota's room shared
by the two), then whole shadows and a canary on the FakeRuntime, driven by a fake gateway: a
loop in the test that writes the `GatewayReport`s a gateway would, with the requests in
flight the test assigns to each generation's replicas. The same on real replicas under
load: tests/worker/test_phase_scaling_load.py."""

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from db import deployments, events, owner_quotas, replicas, tasks, traffic
from db.models import Model
from db.replicas import Replica
from schemas.gateway import TRAFFIC_BOUNDS_S, GatewayReport, GenerationTraffic, Latency
from schemas.queue import GATEWAY_KEY_PREFIX, GATEWAY_TTL_S
from schemas.tasks import DeploymentConfig, ReplicaState, TaskKind, TaskRequest, TaskStatus
from service.domain import task_requests
from tests.worker.decisions import a_model, deploy, run
from tests.worker.fake_runtime import FakeRuntime
from worker.context import WorkerContext
from worker.jobs import run_task
from worker.scaling.kpa import Knobs
from worker.scaling.phase_scaling import bounds, fit_to_room, routed

pytestmark = pytest.mark.timeout(60)
# Each in-flight request wants one replica (target 1 at 100 %), over short windows.
KNOBS = {"autoscaling_enabled": True, "autoscaling_min": 1, "autoscaling_max": 4,
         "autoscaling_target_concurrency": 1, "autoscaling_target_utilization": 1.0,
         "autoscaling_stable_window_s": 2, "autoscaling_panic_window_s": 1,
         "autoscaling_scale_down_delay_s": 1}


def _row(generation: int, state: str, awaiting: bool = False) -> Replica:
    now = datetime.now(UTC)
    return Replica(uuid4(), uuid4(), generation, None, "process", "ref", "http://x", state,
                   None, now, now, None, awaiting)


def test_a_generation_share_is_taken_by_its_routed_replicas_only() -> None:
    rows = [_row(1, "ready"), _row(1, "draining"), _row(1, "starting"),
            _row(2, "starting"), _row(2, "starting", awaiting=True), _row(2, "draining")]
    assert routed(rows, 1, serving=True) == [rows[0]]
    assert routed(rows, 2, serving=False) == [rows[3]], "awaiting health: not routed yet"


def test_a_generation_keeps_one_replica_in_the_phase_even_when_its_min_is_zero() -> None:
    config = DeploymentConfig.model_validate(KNOBS | {"autoscaling_min": 0})
    assert bounds(Knobs.of(config)) == (1, 4)


def test_quota_room_bounds_both_generations_together() -> None:
    assert fit_to_room({1: 3, 2: 2}, {1: 2, 2: 1}, None) == {1: 3, 2: 2}
    assert fit_to_room({1: 3, 2: 2}, {1: 2, 2: 1}, 5) == {1: 3, 2: 2}
    # 2 replicas of room left over the 3 running, 3 wanted: shared by each one's wish.
    assert fit_to_room({1: 3, 2: 3}, {1: 2, 2: 1}, 5) == {1: 3, 2: 2}
    assert fit_to_room({1: 4, 2: 4}, {1: 2, 2: 2}, 6) == {1: 3, 2: 3}
    # Never cut below what runs (a quota lowered under it), but a wish to go down is kept.
    assert fit_to_room({1: 3, 2: 2}, {1: 2, 2: 2}, 3) == {1: 2, 2: 2}
    assert fit_to_room({1: 1, 2: 3}, {1: 2, 2: 2}, 4) == {1: 1, 2: 3}


class FakeGateway:
    """A fake gateway (no HTTP): every 0.1 s it writes the report a gateway routing the
    model would, with `load[generation]` requests in flight spread over that generation's
    routed replicas (none on a draining one, so drains end)."""

    def __init__(self, ctx: WorkerContext, model_id: UUID) -> None:
        self.ctx, self.model_id = ctx, model_id
        self.load: dict[int, int] = {}
        # Or: this many in flight in all, split by the canary's weight (`load` unused).
        self.total: int | None = None
        # Every generation's answers, counted as a gateway counts them (all alike: 20 ms).
        self.traffic: dict[int, GenerationTraffic] = {}
        self.weights: list[int] = []  # the canary's weight at each sample
        # Routed replicas by generation, sampled while the phase's split is on.
        self.counts: list[dict[int, int]] = []

    async def run(self) -> None:
        key = GATEWAY_KEY_PREFIX + "fake-" + str(self.model_id)
        while True:
            deployment = await deployments.get(self.ctx.pool, self.model_id)
            assert deployment is not None and deployment.active_generation is not None
            serving = deployment.active_generation
            rows = await replicas.list_for_model(self.ctx.pool, self.model_id)
            split = await traffic.get_split(self.ctx.pool, self.model_id)
            if self.total is not None and split is not None:
                taken = round(self.total * split.weight / 100)
                self.load = {serving: self.total - taken, split.generation: taken}
            inflight: dict[str, int] = {}
            counts: dict[int, int] = {}
            for generation in {r.generation for r in rows}:
                mine = routed(rows, generation, serving=generation == serving)
                counts[generation] = len(mine)
                for i, replica in enumerate(mine):
                    share = self.load.get(generation, 0)
                    inflight[str(replica.id)] = share // len(mine) + (i < share % len(mine))
            if split is not None:
                self.counts.append(counts)
                self.weights.append(split.weight)
            for generation, n in self.load.items():
                self.traffic[generation] = self.traffic.get(generation, GenerationTraffic()) \
                    + _answers(max(n, 1))  # a share under one in flight still answers
            report = GatewayReport(
                gateway_id="fake", at=time.time(), generations={str(self.model_id): serving},
                inflight={k: v for k, v in inflight.items() if v},
                traffic={str(self.model_id): {str(g): t for g, t in self.traffic.items()}})
            await self.ctx.redis.set(key, report.model_dump_json(), ex=GATEWAY_TTL_S)
            await asyncio.sleep(0.1)


def _answers(count: int) -> GenerationTraffic:
    """`count` answers of 20 ms each, as a gateway's counters."""
    buckets = [0] * (len(TRAFFIC_BOUNDS_S) + 1)
    buckets[bisect_left(TRAFFIC_BOUNDS_S, 0.02)] = count
    return GenerationTraffic(requests=count, latency=Latency(count=count, sum_s=0.02 * count,
                                                             buckets=buckets))


@contextlib.asynccontextmanager
async def fake_gateway(ctx: WorkerContext, model_id: UUID) -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway(ctx, model_id)
    job = asyncio.create_task(gateway.run())
    try:
        yield gateway
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        await ctx.redis.delete(GATEWAY_KEY_PREFIX + "fake-" + str(model_id))


async def _shadow(ctx: WorkerContext, model: Model, duration_s: float) -> Any:
    config = DeploymentConfig.model_validate(KNOBS | {"rollout": {
        "strategy": "shadow", "shadow": {"percent": 50, "duration_s": duration_s}}})
    task, _ = await task_requests.accept(
        ctx.pool, ctx.redis, TaskKind.deploy,
        TaskRequest(embedding_model_id=model.identifier, config=config), None,
        settings=ctx.settings)
    return task


async def _serving_two(ctx: WorkerContext, name: str) -> Model:
    model = await a_model(ctx, name)
    first = await deploy(ctx, model, replicas=2, **KNOBS)
    assert first.status == TaskStatus.done, first.detail
    return model


async def test_each_generation_follows_its_own_share_during_a_shadow(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """Serving 2 replicas; in the phase the candidate carries 3 in flight and the serving
    one none: the candidate goes to 3, the serving one to its floor of 1; the switch
    serves with the candidate's 3."""
    model = await _serving_two(fake_ctx, "phase-share")
    async with fake_gateway(fake_ctx, model.id) as gateway:
        gateway.load = {1: 0, 2: 3}
        ended = await run(fake_ctx, await _shadow(fake_ctx, model, duration_s=6))
    assert ended.status == TaskStatus.done, ended.detail
    during = gateway.counts
    assert max(c[2] for c in during) == 3, during
    assert min(c[1] for c in during) == 1, during
    assert all(c[1] >= 1 and c[2] >= 2 for c in during), "never below the phase's floor"
    assert ended.metadata["replicas_current"] == 3
    assert len(fake_runtime.running(model.id, 2)) == 3 and not fake_runtime.running(model.id, 1)
    deployment = await deployments.get(fake_ctx.pool, model.id)
    assert deployment is not None and deployment.config["replicas"] == 3
    said = [e.message for e in await events.list_recent(fake_ctx.pool, model.id, 100)]
    assert any(m.startswith("generation 2 (candidate, shadow 50 %): scaled 2 → 3")
               for m in said), said
    assert any(m.startswith("generation 1 (serving, shadow 50 %): scaled 2 → 1")
               for m in said), said


async def test_a_canary_candidate_gets_the_replicas_of_its_next_share_before_it(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """4 in flight in all, split by weight. At 10 % the candidate's share wants its floor
    (1, from the 2 it started with) while the serving one grows to 4; before the weight
    rises to 100 % the candidate is scaled for that share (4) and the step waits for it,
    so it never takes the whole load on the one replica its small share kept. The serving
    generation, with no share at 100 %, keeps the 4 the whole load needs: a failing step
    would give it all back at once."""
    model = await _serving_two(fake_ctx, "phase-canary")
    config = DeploymentConfig.model_validate(KNOBS | {"rollout": {
        "strategy": "canary", "canary": {"steps": [10, 100], "step_s": 3,
                                         "min_requests": 5}}})
    task, _ = await task_requests.accept(
        fake_ctx.pool, fake_ctx.redis, TaskKind.deploy,
        TaskRequest(embedding_model_id=model.identifier, config=config), None,
        settings=fake_ctx.settings)
    async with fake_gateway(fake_ctx, model.id) as gateway:
        gateway.total = 4
        ended = await run(fake_ctx, task)
    assert ended.status == TaskStatus.done, (ended.detail, ended.metadata.get("rollout"))
    at = list(zip(gateway.weights, gateway.counts, strict=True))
    small = [c for w, c in at if w == 10]
    whole = [c for w, c in at if w == 100]
    assert min(c[2] for c in small) == 1, small
    assert max(c[1] for c in small) == 4, small
    assert whole and whole[0][2] == 4, ("the candidate had its replicas before", whole[:3])
    assert all(c[1] == 4 for c in whole), ("the serving one kept its replicas", whole)
    said = [e.message for e in await events.list_recent(fake_ctx.pool, model.id, 100)]
    assert any(m.startswith("generation 2 (candidate, before canary 100 %): scaled 1 → 4")
               for m in said), said
    assert ended.metadata["replicas_current"] == 4


async def test_the_quota_counts_both_generations(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """A quota of 4 replicas, 2 serving busy with 2 in flight, 2 candidates that want 4:
    the candidate is held at 2 (2 + 2 = 4) and a warning says what the quota held back."""
    model = await _serving_two(fake_ctx, "phase-quota")
    await owner_quotas.set_overrides(fake_ctx.pool, model.owner_id, {"max_replicas": 4})
    async with fake_gateway(fake_ctx, model.id) as gateway:
        gateway.load = {1: 2, 2: 4}
        ended = await run(fake_ctx, await _shadow(fake_ctx, model, duration_s=4))
    assert ended.status == TaskStatus.done, ended.detail
    during = gateway.counts
    assert during and all(c[1] + c[2] <= 4 for c in during), during
    said = [e.message for e in await events.list_recent(fake_ctx.pool, model.id, 100)]
    held = [m for m in said if "the owner's quota allows 4" in m]
    assert len(held) == 1, ("said once, not at every tick", said)
    assert ended.metadata["replicas_current"] == 2


async def test_a_stopped_phase_removes_the_replicas_its_resize_left_starting(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """A candidate's replica the phase is adding never gets healthy; the worker stops
    mid-phase: the hand-back leaves generation 1 alone serving, nothing of 2 running."""
    model = await _serving_two(fake_ctx, "phase-stop")
    async with fake_gateway(fake_ctx, model.id) as gateway:
        gateway.load = {1: 0, 2: 4}
        task = await _shadow(fake_ctx, model, duration_s=30)
        job = asyncio.create_task(run_task(fake_ctx, str(task.id)))
        for _ in range(400):
            rows = await replicas.list_for_model(fake_ctx.pool, model.id)
            if any(r.awaiting_health for r in rows):
                break
            if len(fake_runtime.running(model.id, 2)) == 2:
                fake_runtime.on_start = lambda spec: "never_ready"
            await asyncio.sleep(0.05)
        assert any(r.awaiting_health for r in rows), rows
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
    current = await tasks.get(fake_ctx.pool, task.id)
    assert current is not None and current.status == TaskStatus.pending, current
    assert not fake_runtime.running(model.id, 2)
    assert len(fake_runtime.running(model.id, 1)) >= 1
    live = await replicas.list_for_model(fake_ctx.pool, model.id)
    assert {r.generation for r in live} == {1}, live
    assert all(r.state == ReplicaState.ready for r in live), live


async def test_serving_replicas_a_killed_phase_left_draining_are_finished(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """A worker killed while the phase drained a serving replica leaves it `draining` and
    running; the next phase (the retried deploy's) drains and stops it first."""
    model = await _serving_two(fake_ctx, "phase-leftover")
    rows = await replicas.list_for_model(fake_ctx.pool, model.id)
    leftover = rows[-1]
    assert await replicas.transition(fake_ctx.pool, leftover.id, ReplicaState.ready,
                                     ReplicaState.draining)
    async with fake_gateway(fake_ctx, model.id) as gateway:
        gateway.load = {1: 1, 2: 1}
        ended = await run(fake_ctx, await _shadow(fake_ctx, model, duration_s=2))
    assert ended.status == TaskStatus.done, ended.detail
    [row] = await replicas.get_many(fake_ctx.pool, [leftover.id])
    assert row.state == ReplicaState.stopped
    assert leftover.runtime_ref not in {r.ref for r in fake_runtime.running(model.id)}
