"""The traffic phase of a canary or shadow rollout (`config.rollout.strategy`), between the
new generation's health checks and the switch (worker/rollout.py calls `hand_over`).

Canary: the candidate takes each of `steps` percent of requests in turn (the deployment's
split, db/traffic.py: the gateways read it with their routes). Every gateway report
interval the worker reads both generations' traffic in the step from the gateways'
reports and asks the judge (worker/canary.py); a step passes once it has lasted `step_s`
and been judged on `min_requests`. A failing step takes the candidate's weight to 0 at
once (so within one report interval of the failure showing), drains and removes the
candidate, and fails the task with every step's figures in `metadata.rollout.steps`.
After the last step the green switch makes the candidate the serving generation.

Shadow: `percent` of requests are also sent to the candidate for `duration_s`, its
answers compared (cosine) and discarded; then the green switch. The figures are in
`metadata.rollout.shadow`.

With autoscaling enabled, each generation is scaled on its own share during the phase
(worker/scaling/phase_scaling.py, ticked at every judgement; before a step raises the
candidate's weight it gets the replicas the new share needs).

The split only ever names one weight, the candidate's; the serving generation takes the
rest, so the weights always sum to 100 %. The candidate's replicas stay `starting` until
the switch: a worker that stops or dies mid-phase (hand_back, the reconciler's expired
lease) calls `abandon`, which takes the split away, waits for the drain and leaves their
removal to the usual path; the task is then retried from the start or fails.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from uuid import UUID

import structlog
from redis.exceptions import RedisError

from db import deployments, replicas, tasks, traffic
from db.tasks import Task
from db.traffic import Split
from schemas.gateway import GatewayReport, GenerationTraffic
from schemas.rollout import CanaryConfig, ShadowConfig, StepRecord
from schemas.tasks import DeploymentConfig, Phase, ReplicaState, TaskStatus
from worker import canary, replica_lifecycle
from worker.context import WorkerContext
from worker.drain import gateway_reports, min_wait_for, wait_drained
from worker.publish import publish_routes

log = structlog.get_logger(__name__)
# How often the gateways write their reports (gateway/load_signal.py REPORT_INTERVAL_S; the
# worker does not import the gateway): the phase judges at this pace.
REPORT_INTERVAL_S = 1.0


class Progressing(Protocol):
    """What the phase uses of worker/rollout.py's `Progress` (which imports this module)."""

    task: Task
    timings: dict[str, float]

    async def enter(self, phase: Phase | None, **metadata: Any) -> None: ...

    async def note(self, **metadata: Any) -> None: ...

    async def event(self, level: str, message: str, generation: int | None = None) -> None: ...


class PhaseScaling(Protocol):
    """What the phase uses of its autoscaling (worker/scaling/phase_scaling.py)."""

    async def tick(self, reports: list[GatewayReport], share: str) -> object: ...

    async def before_step(self, weight: int, share: str) -> None: ...

    async def stop(self) -> None: ...

    async def close(self, cancel: bool) -> None: ...


# Makes a phase's autoscaling, or None when neither generation autoscales: `PhaseScaling.of`
# of worker/scaling/phase_scaling.py, passed in by worker/jobs.py (the scale task imports
# worker/rollout.py, which imports this module, so this one does not import scaling).
ScalingOf = Callable[[WorkerContext, UUID, UUID, int, int, DeploymentConfig],
                     Awaitable[PhaseScaling | None]]


async def _reports(ctx: WorkerContext) -> list[GatewayReport]:
    try:
        async with asyncio.timeout(2.0):
            return await gateway_reports(ctx.redis)
    except (RedisError, OSError, TimeoutError):
        log.warning("traffic_phase_reports_unreadable")
        return []


async def _route(ctx: WorkerContext, model_id: UUID, split: Split | None) -> None:
    if split is None:
        await traffic.clear_split(ctx.pool, model_id)
    else:
        await traffic.set_split(ctx.pool, model_id, split)
    await publish_routes(ctx, model_id)


async def hand_over(ctx: WorkerContext, progress: Progressing, model_id: UUID, generation: int,
                    config: DeploymentConfig, scaling_of: ScalingOf | None = None
                    ) -> dict[str, Any] | None:
    """Run the strategy's traffic phase for the healthy candidate `generation`. Returns
    what the task's metadata records of it ({} for green), or None when the candidate
    was rejected (the task is then finished, failed, and the candidate removed)."""
    rollout = config.rollout
    if rollout.strategy == "green":
        return {}
    deployment = await deployments.get(ctx.pool, model_id)
    serving = deployment.active_generation if deployment else None
    if serving is None:
        note = {"strategy": rollout.strategy, "skipped": "no serving generation to judge by"}
        await progress.event("info", f"{rollout.strategy}: nothing serves yet; green switch",
                             generation)
        return {"rollout": note}
    # Each generation autoscaled on its own share (worker/scaling/phase_scaling.py); its
    # resize is let finish before the switch, cancelled before a rejection or a stop.
    scaling = (await scaling_of(ctx, progress.task.id, model_id, serving, generation, config)
               if scaling_of is not None else None)
    passed = False
    try:
        if rollout.strategy == "shadow":
            note = await _shadow(ctx, progress, model_id, serving, generation, rollout.shadow,
                                 scaling)
            passed = True
            return {"rollout": note}
        steps = await _canary(ctx, progress, model_id, serving, generation, rollout.canary,
                              scaling)
        passed = steps[-1].verdict == "pass"
        if not passed:
            if scaling is not None:
                await scaling.stop()  # no replica added while the candidate goes
            await _reject(ctx, progress, model_id, serving, generation, steps)
            return None
        return {"rollout": {"strategy": "canary", "steps": [s.model_dump() for s in steps]}}
    finally:
        if scaling is not None:
            await scaling.close(cancel=not passed)


async def _canary(ctx: WorkerContext, progress: Progressing, model_id: UUID, serving: int,
                  candidate: int, config: CanaryConfig, scaling: PhaseScaling | None
                  ) -> list[StepRecord]:
    """Walk the steps; the last record is the failing one if any fails."""
    key = str(model_id)
    await progress.enter(Phase.canary, generation=candidate)
    reports = await _reports(ctx)
    baseline_from = canary.totals(reports, key, serving)
    done: list[StepRecord] = []
    for weight in config.steps:
        if scaling is not None:  # the replicas its new share needs, before it takes it
            await scaling.before_step(weight, f"canary {weight} %")
        await _route(ctx, model_id, Split(candidate, weight))
        await progress.event("info", f"canary: generation {candidate} takes {weight} %",
                             candidate)
        record = await _step(ctx, progress, model_id, serving, candidate, weight, config,
                             baseline_from, done, scaling)
        done.append(record)
        if record.verdict != "pass":
            return done
    return done


async def _step(ctx: WorkerContext, progress: Progressing, model_id: UUID, serving: int,
                candidate: int, weight: int, config: CanaryConfig,
                baseline_from: dict[str, GenerationTraffic], done: list[StepRecord],
                scaling: PhaseScaling | None = None) -> StepRecord:
    """One step: judged every report interval until it passes (step_s elapsed, judged on
    min_requests), fails, or runs past its deadline without min_requests."""
    key = str(model_id)
    reports = await _reports(ctx)
    serving_from = canary.totals(reports, key, serving)
    candidate_from = canary.totals(reports, key, candidate)
    began = time.monotonic()
    while True:
        elapsed = time.monotonic() - began
        await asyncio.sleep(max(0.05, min(REPORT_INTERVAL_S, config.step_s - elapsed))
                            if elapsed < config.step_s else REPORT_INTERVAL_S)
        elapsed = time.monotonic() - began
        reports = await _reports(ctx)
        if scaling is not None:
            await scaling.tick(reports, f"canary {weight} %")
        serving_now = canary.totals(reports, key, serving)
        record = canary.judge(
            weight, serving, canary.window(serving_from, serving_now), candidate,
            canary.window(candidate_from, canary.totals(reports, key, candidate)), config,
            baseline=canary.window(baseline_from, serving_now))
        record.elapsed_s = round(elapsed, 3)
        await progress.note(rollout={"strategy": "canary", "steps": [
            s.model_dump() for s in [*done, record]]})
        if record.verdict == "fail":
            return record
        if record.verdict == "pass" and elapsed >= config.step_s:
            return record
        if record.verdict == "wait" and elapsed >= config.step_deadline_s:
            record.verdict = "fail"
            record.reasons.append(f"fewer than {config.min_requests} candidate requests in "
                                  f"{config.step_deadline_s:g} s")
            return record


async def _shadow(ctx: WorkerContext, progress: Progressing, model_id: UUID, serving: int,
                  candidate: int, config: ShadowConfig, scaling: PhaseScaling | None
                  ) -> dict[str, Any]:
    """Mirror `percent` of requests for `duration_s`; the figures it gathered."""
    key = str(model_id)
    await progress.enter(Phase.shadow, generation=candidate)
    reports = await _reports(ctx)
    serving_from = canary.totals(reports, key, serving)
    candidate_from = canary.totals(reports, key, candidate)
    await _route(ctx, model_id, Split(candidate, 0, config.percent))
    await progress.event("info", f"shadow: {config.percent:g} % of requests mirrored to "
                         f"generation {candidate}", candidate)
    began = time.monotonic()
    note: dict[str, Any] = {}
    while (elapsed := time.monotonic() - began) < config.duration_s:
        await asyncio.sleep(max(0.05, min(REPORT_INTERVAL_S, config.duration_s - elapsed)))
        reports = await _reports(ctx)
        if scaling is not None:
            await scaling.tick(reports, f"shadow {config.percent:g} %")
        mirrored = canary.window(candidate_from, canary.totals(reports, key, candidate))
        served = canary.window(serving_from, canary.totals(reports, key, serving))
        note = {"strategy": "shadow", "percent": config.percent,
                "elapsed_s": round(time.monotonic() - began, 3),
                "serving": canary.figures(serving, served).model_dump(),
                "candidate": canary.figures(candidate, mirrored).model_dump(),
                "compared": mirrored.compared,
                "mean_cosine": (round(mirrored.cosine_sum / mirrored.compared, 6)
                                if mirrored.compared else None)}
        await progress.note(rollout=note)
    return note


async def _reject(ctx: WorkerContext, progress: Progressing, model_id: UUID, serving: int,
                  candidate: int, steps: list[StepRecord]) -> None:
    """The candidate failed a step: weight 0 now, drain, remove, fail the task."""
    failed = steps[-1]
    # Recorded first: a worker stopped while the candidate drains fails the task with it
    # (worker/rollout.py hand_back) instead of retrying a canary already judged.
    await progress.note(rollout={"strategy": "canary",
                                 "steps": [s.model_dump() for s in steps]})
    await _route(ctx, model_id, None)
    reason = (f"canary step {failed.weight} % failed: " + "; ".join(failed.reasons))
    await progress.event("error", f"generation {candidate} stopped: {reason}", candidate)
    await progress.enter(Phase.draining, generation=candidate)
    ids = [r.id for r in await replicas.list_for_model(ctx.pool, model_id)
           if r.generation == candidate]
    await wait_drained(ctx.redis, model_id, serving, ids, ctx.settings.drain_timeout_s,
                       min_wait_for(ctx.settings.routes_poll_s))
    await progress.enter(Phase.removing, generation=candidate)
    await replica_lifecycle.remove(ctx, ids, ReplicaState.failed, ctx.settings.stop_grace_s)
    status = await deployments.restore_after_failure(ctx.pool, model_id)
    await progress.enter(None)
    await tasks.finish(ctx.pool, progress.task.id, ctx.worker_id, TaskStatus.failed, reason,
                       {"generation": candidate, "deployment_status": status,
                        "rollout": {"strategy": "canary",
                                    "steps": [s.model_dump() for s in steps]},
                        "timings": progress.timings})
    log.warning("canary_rejected", model=str(model_id), generation=candidate, reason=reason)


async def abandon(ctx: WorkerContext, model_id: UUID) -> bool:
    """A task in its traffic phase stopped (its worker stops or died): the serving
    generation takes all traffic again and the candidate drains. True if there was a
    split to take away."""
    split = await traffic.get_split(ctx.pool, model_id)
    if split is None:
        return False
    await _route(ctx, model_id, None)
    deployment = await deployments.get(ctx.pool, model_id)
    serving = deployment.active_generation if deployment else None
    if serving != split.generation:
        ids = [r.id for r in await replicas.list_for_model(ctx.pool, model_id)
               if r.generation == split.generation]
        await wait_drained(ctx.redis, model_id, serving, ids, ctx.settings.drain_timeout_s,
                           min_wait_for(ctx.settings.routes_poll_s))
    log.warning("traffic_phase_abandoned", model=str(model_id), generation=split.generation)
    return True
