"""The autoscaler loop (issue 14), one in every worker; one decision-maker per deployment.

Each tick reads every gateway's report (requests in flight per replica, and requests held
for a deployment at zero), and for each autoscaled deployment whose lease this worker
holds, feeds the sample to its `kpa.Scaler` and, when the decision differs from the
replicas ready and no task of the model is open, creates a `scale` task to that count
(a scale-up it also runs itself at once, besides queueing it).
Ticks come every `autoscale_interval_s` and, between them, as soon as a gateway announces
a jump in load on `LOAD_CHANNEL` (at most one such tick per `WAKE_GAP_S`); a lost
announcement only delays the decision to the next regular tick.

Why a Redis lease (SET NX PX, renewed by compare-and-expire) rather than a Postgres
advisory lock: an advisory lock is held by one connection, so a worker would pin a
pooled connection per deployment, and a half-open connection of a killed worker can
hold it for minutes; a lease expires by itself `autoscale_lease_s` after its worker
died. Should two workers ever both believe they lead (a Redis failover), no double
scale follows: a scale task names a target count, a model runs one task at a time, a
new scale task cancels an older pending one, and no decision is made while a task of
the model is open.
"""

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from uuid import UUID, uuid4

import structlog
from arq import Retry
from redis.exceptions import RedisError

from db import deployments, events, models, replicas, tasks
from db.deployments import Deployment
from db.errors import DatabaseError
from schemas.gateway import GatewayReport
from schemas.queue import AUTOSCALER_LEASE_PREFIX, GATEWAY_TTL_S, JOB_RUN_TASK, LOAD_CHANNEL
from schemas.task_payloads import ScalePayload
from schemas.tasks import DeploymentConfig, ReplicaState, TaskKind
from worker.admission import quotas
from worker.context import WorkerContext
from worker.drain import gateway_reports
from worker.scaling.kpa import Decision, Knobs, Scaler

log = structlog.get_logger(__name__)
# Claim and run one task by id (worker/jobs.py's run_task).
RunTask = Callable[[WorkerContext, str], Awaitable[str]]
# Renew only a lease we hold: compare the owner, then extend (atomic in Redis).
_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end"""
# Ticks woken by announcements are at least this far apart (a burst of them is one tick).
WAKE_GAP_S = 0.05
# While LOAD_CHANNEL cannot be subscribed, try again after this long (ticks go on).
RESUBSCRIBE_S = 1.0


async def holds_lease(ctx: WorkerContext, model_id: UUID) -> bool:
    """Take or renew this worker's lease on deciding `model_id`'s scale."""
    key = AUTOSCALER_LEASE_PREFIX + str(model_id)
    ttl_ms = int(ctx.settings.autoscale_lease_s * 1000)
    if await ctx.redis.set(key, ctx.worker_id, nx=True, px=ttl_ms):
        return True
    renewed = ctx.redis.eval(_RENEW, 1, key, ctx.worker_id, str(ttl_ms))
    return bool(await renewed)  # type: ignore[misc]


async def release_leases(ctx: WorkerContext, model_ids: list[UUID]) -> None:
    for model_id in model_ids:
        with contextlib.suppress(RedisError, OSError):
            await ctx.redis.eval(_RELEASE, 1, AUTOSCALER_LEASE_PREFIX + str(model_id),
                                 ctx.worker_id)  # type: ignore[misc]


def demand(reports: list[GatewayReport], model_id: UUID, replica_ids: set[str],
           now: float, held: bool = True) -> tuple[float, bool]:
    """Requests in flight to the model's replicas plus those held for it (unless `held`
    is False: a canary's candidate, phase_scaling.py), on every gateway; and whether a
    gateway's report says the model's load jumped."""
    total, jumped = 0, False
    for report in reports:
        if report.at < now - GATEWAY_TTL_S:
            continue
        total += sum(n for rid, n in report.inflight.items() if rid in replica_ids)
        total += report.held.get(str(model_id), 0) if held else 0
        jumped = jumped or str(model_id) in report.jumped
    return float(total), jumped


class Autoscaler:
    """This worker's deciders, by deployment; a deployment it loses the lease on is forgotten
    (a later lease starts from a fresh window)."""

    def __init__(self, ctx: WorkerContext, run_task: RunTask) -> None:
        self.ctx = ctx
        self.run_task = run_task
        self.scalers: dict[UUID, Scaler] = {}
        # Scale-ups this worker runs itself, at once (see `_run_now`).
        self.running: set[asyncio.Task[None]] = set()

    async def tick(self, periodic: bool = True) -> None:
        """Sample every deployment this worker decides and scale where the decision says;
        `periodic` False for a tick woken by an announcement (see `kpa.Scaler.observe`)."""
        ctx, now = self.ctx, time.time()
        reports = await gateway_reports(ctx.redis)
        live = await replicas.list_live(ctx.pool)
        seen: set[UUID] = set()
        for deployment in await deployments.serving(ctx.pool):
            config = DeploymentConfig.model_validate(deployment.config)
            if not config.autoscaling_enabled or not await holds_lease(ctx, deployment.model_id):
                continue
            seen.add(deployment.model_id)
            mine = [r for r in live if r.model_id == deployment.model_id]
            scaler = self._scaler(deployment.model_id, config)
            inflight, jumped = demand(reports, deployment.model_id, {str(r.id) for r in mine},
                                      now)
            scaler.observe(now, inflight, periodic, jumped)
            ready = sum(1 for r in mine if r.generation == deployment.active_generation
                        and r.state == ReplicaState.ready)
            if await tasks.has_open_task(ctx.pool, deployment.model_id):
                continue
            decision = scaler.decide(now, ready)
            if decision is not None and decision.desired != ready:
                await self._scale(deployment, config, scaler.knobs, decision)
        for gone in set(self.scalers) - seen:
            del self.scalers[gone]

    def _scaler(self, model_id: UUID, config: DeploymentConfig) -> Scaler:
        knobs = Knobs.of(config)
        scaler = self.scalers.get(model_id)
        if scaler is None:
            scaler = self.scalers[model_id] = Scaler(knobs)
        scaler.knobs = knobs  # a redeploy may have changed them
        return scaler

    async def _scale(self, deployment: Deployment, config: DeploymentConfig, knobs: Knobs,
                     decision: Decision) -> None:
        ctx = self.ctx
        model = await models.get(ctx.pool, deployment.model_id)
        if model is None:
            return
        desired = decision.desired
        if desired > decision.ready:
            desired = await quotas.clamp_scale(ctx, model, config, desired,
                                               deployment.active_generation, keep=decision.ready)
            if desired == decision.ready:
                return
        decided = Decision(desired, decision.ready, decision.average, decision.window_s,
                           decision.panicking)
        task_id = await create_scale_task(ctx, deployment.model_id, decided, knobs)
        if desired > decision.ready:
            self._run_now(task_id)
        await events.add(ctx.pool, deployment.model_id, "info", decided.describe(knobs),
                         task_id=task_id, generation=deployment.active_generation)
        await deployments.set_desired(ctx.pool, deployment.model_id, desired)
        log.info("autoscale_decision", model=str(deployment.model_id), ready=decision.ready,
                 desired=desired, average=round(decision.average, 2),
                 panicking=decision.panicking)

    def _run_now(self, task_id: UUID) -> None:
        """Run a scale-up here at once rather than after arq's next poll: every added
        replica is capacity the load is waiting for. The task is queued as well, so it
        survives this worker; whichever of the two claims it first runs it, the other
        finds nothing to claim (as for any duplicate delivery)."""
        async def run() -> None:
            with contextlib.suppress(Retry):  # busy or not its owner's turn: arq retries it
                await self.run_task(self.ctx, str(task_id))

        job = asyncio.create_task(run())
        self.running.add(job)
        job.add_done_callback(self.running.discard)

    async def stop(self) -> None:
        """Cancel the scale-ups running here (each hands its task back) and wait for them."""
        for job in self.running:
            job.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


async def create_scale_task(ctx: WorkerContext, model_id: UUID, decision: Decision,
                            knobs: Knobs) -> UUID:
    """Insert and enqueue a scale task as the API would (the row first: the outbox)."""
    task_id = uuid4()
    payload = ScalePayload(embedding_model_id=str(model_id), replicas=decision.desired,
                           autoscaler=True)
    await tasks.insert(
        ctx.pool, task_id=task_id, kind=TaskKind.scale.value, model_id=model_id,
        request=payload.stored(), request_hash=hashlib.sha256(task_id.bytes).hexdigest(),
        idempotency_key=None, created_by=None,
        metadata={"replicas_current": decision.ready, "replicas_desired": decision.desired,
                  "reason": decision.describe(knobs)})
    with contextlib.suppress(RedisError, OSError):  # the reconciler enqueues it otherwise
        await ctx.redis.enqueue_job(JOB_RUN_TASK, str(task_id), _job_id=str(task_id))
        await tasks.mark_enqueued(ctx.pool, task_id)
    return task_id


async def listen_for_jumps(ctx: WorkerContext, woken: asyncio.Event) -> None:
    """Set `woken` on every announcement on LOAD_CHANNEL, resubscribing after an outage."""
    while True:
        try:
            async with ctx.redis.pubsub() as pubsub:
                await pubsub.subscribe(LOAD_CHANNEL)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=RESUBSCRIBE_S)
                    if message is not None:
                        woken.set()
        except (RedisError, OSError) as exc:
            log.warning("load_channel_unavailable", error=str(exc))
            await asyncio.sleep(RESUBSCRIBE_S)


async def _woken_before(woken: asyncio.Event, deadline: float) -> bool:
    """Wait for `woken` until the loop's clock reaches `deadline`; True if it came first."""
    timeout = deadline - asyncio.get_running_loop().time()
    if timeout <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await woken.wait()
            return True
    return False


async def run_forever(ctx: WorkerContext, run_task: RunTask) -> None:
    """Tick every `autoscale_interval_s`, and when a gateway announces a jump, until
    cancelled; a failing tick is logged. `run_task` runs a scale-up at once (worker/jobs.py's,
    passed in by worker/settings.py: jobs dispatches to scaling, so scaling does not import
    jobs)."""
    scaler, woken = Autoscaler(ctx, run_task), asyncio.Event()
    listener = asyncio.create_task(listen_for_jumps(ctx, woken))
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    try:
        while True:
            periodic = not await _woken_before(woken, next_at)
            woken.clear()
            if periodic:
                next_at = loop.time() + ctx.settings.autoscale_interval_s
            try:
                await scaler.tick(periodic)
            except (DatabaseError, RedisError, OSError) as exc:
                log.warning("autoscale_failed", error=str(exc))
            except Exception:
                log.exception("autoscale_crashed")
            if not periodic:
                await asyncio.sleep(WAKE_GAP_S)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await asyncio.shield(scaler.stop())
        await asyncio.shield(release_leases(ctx, list(scaler.scalers)))
