"""Autoscaling during a canary or shadow (issue 27, item 3): each generation on its own share.

During a traffic phase both generations run and the model's deploy task is open, so the
autoscaler loop (worker/scaling/autoscaler.py) makes no decision for the model: a `scale`
task could not run beside the deploy (one task per model) and would race the phase's
own replica changes. Instead the traffic phase, the one task that owns the model's
replicas until its switch, ticks a `PhaseScaling` every report interval: each generation
whose config enables autoscaling has its own `kpa.Scaler`, fed with the requests in
flight to that generation's replicas (the gateways report in-flight counts per replica),
so a candidate at 5 % is sized for its 5 %, a shadow's candidate for the share it
mirrors; the serving generation, below, for what it may have to take back.

What the decision obeys, beyond the KPA's own rules:

- In a canary the serving generation is sized for the whole load (both generations' in
  flight), not for its share alone: a failing step (or a worker that stops) gives it the
  candidate's share back at once, within one report interval, and it must hold it. So
  its scale-down below what the whole load needs is the decision that waits, until the
  switch (which drains it anyway); it still scales up as the load grows. In a shadow it
  serves every request already: its own in flight is the whole load.
- Each generation within its own config's [`autoscaling_min`, `autoscaling_max`], and at
  least 1: a generation at zero replicas gives its share to the other (gateway/traffic.py
  `split`), so a candidate scaled to zero could not be judged.
- Quotas count both generations: the owner's room for this model (beside their other
  models) bounds the two counts together, each replica counted at the larger of the two
  generations' replica memory; a generation is never cut below what it runs, and growth
  that does not fit is shared in proportion to each generation's wish (`fit_to_room`),
  with a warning event. Capacity (this worker's memory budget) counts every running
  replica of the runtime, both generations included (worker/admission/capacity.py).
- One resize at a time: while replicas a decision added are starting or those it removes
  are draining, the next decision waits (`Wait`), because the counts it would decide on
  are not settled yet; deciding on a changing count is how two scalings race. It also
  waits while the phase ends: once a step failed (the candidate is rejected and
  drained), and from the last step's pass to the switch; the autoscaler takes over
  after the task.
- Before a canary's step raises the candidate's weight, the candidate gets the replicas
  the new share needs and the step waits for them (`before_step`); then its scaler
  starts over, its windows having held the old share's load.

Replicas it adds to the serving generation join the routing table as a scale's do
(`ready` once healthy). A candidate's replicas stay `starting` until the switch and are
routed from the start of the phase, so one added mid-phase is recorded as
`awaiting_health` (migration 015) and routed only once its /health answers. Removed
replicas leave the routing table first, then drain, then stop, as in a scale task.
"""

import asyncio
import math
import time
from dataclasses import dataclass
from uuid import UUID

import structlog
from redis.exceptions import RedisError

from db import deployments, events, models, replicas
from db.errors import DatabaseError
from db.models import Model
from db.replicas import Replica
from schemas.gateway import GatewayReport
from schemas.tasks import DeploymentConfig, ReplicaState
from worker import replica_lifecycle
from worker.admission import capacity, quotas
from worker.context import WorkerContext
from worker.drain import min_wait_for, wait_drained
from worker.health import ReplicaFailed, wait_ready
from worker.publish import publish_routes
from worker.runtimes.base import RuntimeFailure, StartedReplica
from worker.scaling.autoscaler import demand
from worker.scaling.kpa import Decision, Knobs, Scaler

log = structlog.get_logger(__name__)


def routed(rows: list[Replica], generation: int, serving: bool) -> list[Replica]:
    """The replicas taking `generation`'s share, oldest first: the serving generation's
    `ready` ones; a candidate's `starting` (or `ready`) ones not awaiting their health check."""
    if serving:
        return [r for r in rows if r.generation == generation and r.state == ReplicaState.ready]
    return [r for r in rows if r.generation == generation
            and r.state in (ReplicaState.starting, ReplicaState.ready) and not r.awaiting_health]


def bounds(knobs: Knobs) -> tuple[int, int]:
    """A generation's fewest and most replicas during a traffic phase."""
    floor = max(1, knobs.min_replicas)
    return floor, max(floor, knobs.max_replicas)


def fit_to_room(wanted: dict[int, int], running: dict[int, int],
                room: int | None) -> dict[int, int]:
    """Each generation's count with both counted against one quota `room` (None: no
    limit). A generation keeps at least what it runs or the fewer it wants (the replicas
    serving its share are not cut); the growth that fits is shared in proportion to each
    generation's wish (largest remainder, the lower generation first on a tie)."""
    if room is None:
        return dict(wanted)
    kept = {g: min(wanted[g], running.get(g, 0)) for g in wanted}
    growth = {g: wanted[g] - kept[g] for g in wanted}
    free = max(0, room - sum(kept.values()))
    if sum(growth.values()) <= free:
        return dict(wanted)
    total = sum(growth.values())
    shares = {g: growth[g] * free / total for g in growth}
    granted = {g: math.floor(shares[g]) for g in growth}
    left = free - sum(granted.values())
    for g in sorted(growth, key=lambda g: (granted[g] - shares[g], g))[:left]:
        granted[g] += 1
    return {g: kept[g] + granted[g] for g in wanted}


@dataclass(frozen=True, slots=True)
class Wait:
    """Why no decision was made this tick."""

    reason: str


@dataclass
class _Generation:
    generation: int
    serving: bool
    config: DeploymentConfig
    scaler: Scaler


class PhaseScaling:
    """The autoscaling of one traffic phase: a scaler per autoscaled generation, and the
    one resize it may have running."""

    def __init__(self, ctx: WorkerContext, task_id: UUID, model: Model,
                 generations: list[_Generation], share: str, takes_back: bool = True) -> None:
        self.ctx, self.task_id, self.model = ctx, task_id, model
        # A canary: a failing step gives the serving generation the candidate's share back
        # at once, so it is sized for the whole load (see the module's docstring).
        self.takes_back = takes_back
        self.generations = {g.generation: g for g in generations}
        self.serving = next(g.generation for g in generations if g.serving)
        self.share = share  # e.g. "canary 20 %", for the events
        self.job: asyncio.Task[None] | None = None
        self.started: list[UUID] = []  # replicas a resize started (for a cancel's cleanup)
        self.draining: list[UUID] = []  # and those it drains
        self.last_wait: Wait | None = None
        self.last_held: tuple[int, int] | None = None

    @classmethod
    async def of(cls, ctx: WorkerContext, task_id: UUID, model_id: UUID, serving: int,
                 candidate: int, config: DeploymentConfig) -> "PhaseScaling | None":
        """The phase's autoscaling, or None when neither generation's config enables it
        (the serving one's is the deployment's stored config, the candidate's the deploy's)."""
        deployment = await deployments.get(ctx.pool, model_id)
        model = await models.get(ctx.pool, model_id)
        if deployment is None or model is None:
            return None
        serving_config = DeploymentConfig.model_validate(deployment.config)
        if not (serving_config.autoscaling_enabled or config.autoscaling_enabled):
            return None
        # Both are kept, autoscaled or not: the quota counts both generations' replicas.
        both = [_Generation(generation, generation == serving, cfg, Scaler(Knobs.of(cfg)))
                for generation, cfg in ((serving, serving_config), (candidate, config))]
        scaling = cls(ctx, task_id, model, both, share="traffic phase",
                      takes_back=config.rollout.strategy == "canary")
        # Serving replicas left draining by a phase whose worker was killed mid-resize
        # (nothing else drains the serving generation while a deploy holds the model): the
        # first resize finishes them, as a scale task finishes a dead scale's.
        left = [r for r in await replicas.list_for_model(ctx.pool, model_id)
                if r.generation == serving and r.state == ReplicaState.draining]
        if left:
            scaling.job = asyncio.create_task(scaling._finish_draining([r.id for r in left]))
        return scaling

    @property
    def candidate(self) -> int:
        return next(g for g in self.generations if g != self.serving)

    async def tick(self, reports: list[GatewayReport], share: str) -> Wait | dict[int, int]:
        """Sample each generation's load; decide and start a resize where one is due.
        Returns why it waited, or each generation's count after the decision."""
        ctx, now = self.ctx, time.time()
        self.share = share
        rows = await replicas.list_for_model(ctx.pool, self.model.id)
        ready: dict[int, list[Replica]] = {}
        for g in self.generations.values():
            mine = {str(r.id) for r in rows if r.generation == g.generation
                    or (g.serving and self.takes_back)}
            inflight, jumped = demand(reports, self.model.id, mine, now, held=g.serving)
            g.scaler.observe(now, inflight, True, jumped)
            ready[g.generation] = routed(rows, g.generation, g.serving)
        if self.job is not None and not self.job.done():
            return self._wait("a resize of this phase is still starting or draining replicas:"
                              " the counts to decide on are not settled")
        decided: dict[int, Decision] = {}
        wanted: dict[int, int] = {}
        for g in self.generations.values():
            count = len(ready[g.generation])
            decision = (g.scaler.decide(now, count) if g.config.autoscaling_enabled
                        else None)
            if decision is None:
                wanted[g.generation] = count
                continue
            floor, ceiling = bounds(g.scaler.knobs)
            wanted[g.generation] = max(floor, min(ceiling, decision.desired))
            decided[g.generation] = decision
        running = {g: len(r) for g, r in ready.items()}
        if wanted == running:
            return running
        room = await self._room()
        targets = fit_to_room(wanted, running, room)
        if targets != wanted and room is not None:
            await self._held_back(sum(wanted.values()), room)
        changes = {g: n for g, n in targets.items() if n != running[g]}
        if not changes:
            return running
        for generation, count in changes.items():
            d = decided[generation]
            said = Decision(count, running[generation], d.average, d.window_s, d.panicking)
            message = (f"generation {generation} ({self._role(generation)}, {share}): "
                       f"{said.describe(self.generations[generation].scaler.knobs)}")
            await events.add(ctx.pool, self.model.id, "info", message, task_id=self.task_id,
                             generation=generation)
            log.info("phase_autoscale_decision", model=str(self.model.id),
                     generation=generation, ready=running[generation], desired=count,
                     average=round(d.average, 2), share=share)
        self.last_wait = None
        self.job = asyncio.create_task(self._resize(changes, ready))
        return targets

    async def before_step(self, weight: int, share: str) -> None:
        """Before a canary's weight rises to `weight`: the candidate gets the replicas that
        share will need, and the step waits for them to be healthy. The need is projected
        from the model's load (both generations' mean in flight over the stable window)
        times the new weight; a step's share raised first and scaled after would overload
        the candidate until its new replicas start, and the judge would stop it on p99
        for what the autoscaler caused. Only ever up: the KPA brings it down in the step."""
        g = self.generations[self.candidate]
        if not g.config.autoscaling_enabled:
            self._start_over()
            return
        job, self.job = self.job, None
        if job is not None:  # the counts the projection starts from must be settled
            await job
        try:
            await self._prepare(g, weight, share)
        finally:
            self._start_over()

    def _start_over(self) -> None:
        """A new step: the candidate's scaler starts over. Its windows hold the load of the
        share it had; decided on them, the candidate just scaled up for 100 % went back to
        the one replica its 10 % had wanted (its scale-down delay remembered that). A fresh
        scaler decides nothing for one panic window, then on the new share alone. The
        serving generation's, fed with the whole load in a canary, goes on."""
        for x in self.generations.values():
            if not (x.serving and self.takes_back):
                x.scaler = Scaler(x.scaler.knobs)

    async def _prepare(self, g: _Generation, weight: int, share: str) -> None:
        now, knobs = time.time(), g.scaler.knobs
        total = (self.generations[self.serving].scaler.stable_mean(now) if self.takes_back
                 else sum(x.scaler.stable_mean(now) for x in self.generations.values()))
        projected = total * weight / 100
        floor, ceiling = bounds(knobs)
        need = max(floor, min(ceiling, math.ceil(projected / (knobs.target * knobs.utilization))))
        rows = await replicas.list_for_model(self.ctx.pool, self.model.id)
        ready = {x.generation: routed(rows, x.generation, x.serving)
                 for x in self.generations.values()}
        have = len(ready[g.generation])
        if need <= have:
            return
        running = {x: len(r) for x, r in ready.items()}
        room = await self._room()
        wanted = running | {g.generation: need}
        targets = fit_to_room(wanted, running, room)
        if targets != wanted and room is not None:
            await self._held_back(sum(wanted.values()), room)
        if targets[g.generation] <= have:
            return
        await events.add(self.ctx.pool, self.model.id, "info",
                         f"generation {g.generation} (candidate, before {share}): scaled "
                         f"{have} → {targets[g.generation]}: its share of {total:.1f} in "
                         f"flight is {projected:.1f}, target {knobs.target:g} at "
                         f"{knobs.utilization:.0%}", task_id=self.task_id,
                         generation=g.generation)
        await self._resize({g.generation: targets[g.generation]}, ready)

    async def _held_back(self, wanted: int, room: int) -> None:
        """The quota's warning event, once for each (wanted, room) in a row: a decision
        held back is made again every tick."""
        if self.last_held != (wanted, room):
            await quotas.held_back(self.ctx, self.model, wanted, room, self.candidate)
        self.last_held = (wanted, room)

    def _role(self, generation: int) -> str:
        return "serving" if generation == self.serving else "candidate"

    def _wait(self, reason: str) -> Wait:
        wait = Wait(reason)
        if wait != self.last_wait:
            log.info("phase_autoscale_waits", model=str(self.model.id), reason=reason)
        self.last_wait = wait
        return wait

    async def _room(self) -> int | None:
        """The owner's quota room for both generations together (None: no limit), each
        replica at the larger of the two generations' replica memory."""
        rooms = [await quotas.replica_room(self.ctx, self.model, g.config, g.generation)
                 for g in self.generations.values()]
        found = [r for r in rooms if r is not None]
        return min(found) if found else None

    async def _resize(self, changes: dict[int, int], ready: dict[int, list[Replica]]) -> None:
        async def one(generation: int, count: int) -> None:
            now = ready[generation]
            try:
                if count > len(now):
                    await self._add(self.generations[generation], count - len(now))
                else:
                    await self._remove(self.generations[generation], now[count:])
            except (DatabaseError, RedisError, OSError) as exc:  # the phase goes on
                log.warning("phase_autoscale_failed", error=str(exc))
                return
            if generation == self.serving:  # quotas count a deployment by its config's count
                left = routed(await replicas.list_for_model(self.ctx.pool, self.model.id),
                              generation, True)
                await deployments.set_scaled_count(self.ctx.pool, self.model.id, generation,
                                                   len(left) or None)

        await asyncio.gather(*(one(g, n) for g, n in changes.items()))

    async def _add(self, g: _Generation, count: int) -> None:
        """Start `count` replicas of `g`; each takes its share once healthy. A failure is
        an event: the phase goes on with the replicas it has."""
        ctx, model = self.ctx, self.model
        memory_mb = replica_lifecycle.placed_memory_mb(ctx, model, g.config, g.generation)
        started: list[tuple[UUID, StartedReplica]] = []
        try:
            env = await replica_lifecycle.generation_env(ctx, model, g.generation, g.config)
            async with capacity.placing(ctx, memory_mb * count):
                for _ in range(count):
                    replica_id, replica = await replica_lifecycle.start(
                        ctx, model, g.generation, self.task_id, g.config, env, memory_mb,
                        awaiting_health=not g.serving)
                    self.started.append(replica_id)
                    started.append((replica_id, replica))
        except (capacity.NoCapacity, RuntimeFailure, replica_lifecycle.SecretsUnreadable) as exc:
            await self._failed(g.generation, f"could not start a replica: {exc}")
        deadline = asyncio.get_running_loop().time() + ctx.settings.deploy_timeout_s

        async def join(replica_id: UUID, replica: StartedReplica) -> None:
            try:
                await wait_ready(ctx.runtime, ctx.http, replica, deadline,
                                 ctx.settings.deploy_timeout_s)
            except ReplicaFailed as exc:
                await replica_lifecycle.remove(ctx, [replica_id], ReplicaState.failed, 0)
                await self._failed(g.generation, str(exc))
                return
            joined = (await replicas.transition(ctx.pool, replica_id, ReplicaState.starting,
                                                ReplicaState.ready)
                      if g.serving else await replicas.set_healthy(ctx.pool, replica_id))
            if joined:
                await publish_routes(ctx, model.id)

        await asyncio.gather(*(join(i, r) for i, r in started))

    async def _remove(self, g: _Generation, leaving: list[Replica]) -> None:
        """Out of the routing table first, then drained, then stopped."""
        ctx = self.ctx
        was = ReplicaState.ready if g.serving else ReplicaState.starting
        ids = [r.id for r in leaving
               if await replicas.transition(ctx.pool, r.id, was, ReplicaState.draining)]
        if not ids:
            return
        self.draining += ids
        await publish_routes(ctx, self.model.id)
        await wait_drained(ctx.redis, self.model.id, self.serving, ids,
                           ctx.settings.drain_timeout_s, min_wait_for(ctx.settings.routes_poll_s))
        await replica_lifecycle.remove(ctx, ids, ReplicaState.stopped, ctx.settings.stop_grace_s)

    async def _finish_draining(self, ids: list[UUID]) -> None:
        self.draining += ids
        await wait_drained(self.ctx.redis, self.model.id, self.serving, ids,
                           self.ctx.settings.drain_timeout_s,
                           min_wait_for(self.ctx.settings.routes_poll_s))
        await replica_lifecycle.remove(self.ctx, ids, ReplicaState.stopped,
                                       self.ctx.settings.stop_grace_s)

    async def _failed(self, generation: int, reason: str) -> None:
        await events.add(self.ctx.pool, self.model.id, "warning",
                         f"generation {generation} ({self._role(generation)}): autoscaling "
                         f"in the traffic phase: {reason}", task_id=self.task_id,
                         generation=generation)

    async def stop(self) -> None:
        """Cancel a running resize (a rejected candidate gets no replica more)."""
        job, self.job = self.job, None
        if job is not None:
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)

    async def close(self, cancel: bool) -> None:
        """The phase ends. Passed (`cancel` False): let a running resize finish, so the
        switch finds settled counts. Rejected or stopped: cancel it, and remove what it
        left starting or draining."""
        if not cancel:
            job, self.job = self.job, None
            if job is not None:
                await job
            return
        await self.stop()
        # What it left half done: replicas it started that take no share yet, and those
        # it was draining. A candidate's replica that joined stays: the candidate's
        # removal (a rejection, a hand-back) takes it with the others.
        rows = await replicas.get_many(self.ctx.pool, self.started + self.draining)
        left = [r.id for r in rows if r.state == ReplicaState.draining
                or (r.state == ReplicaState.starting and r.id in self.started
                and (r.generation == self.serving or r.awaiting_health))]
        await replica_lifecycle.remove(self.ctx, left, ReplicaState.stopped, grace_s=0)
