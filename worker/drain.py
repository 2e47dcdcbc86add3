"""Wait until every live gateway has stopped routing to, and finished its requests on, replicas.

Gateways report through Redis; one that cannot (its Redis is not ours, or unreachable)
is invisible here, but still reloads its routes from Postgres every `routes_poll_s`.
So the wait also lasts at least that long (`min_wait_s`), or replicas such a gateway
still routes to would be removed under it. While Redis cannot be read nothing is known,
and the wait runs to its bound.
"""

import asyncio
from typing import Literal
from uuid import UUID

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.gateway import GatewayReport, read_reports

log = structlog.get_logger(__name__)
# How a drain ended: every gateway settled; the bound passed first; or (a scale to zero
# only) a gateway holds a request for the model, so its replicas are wanted again.
Outcome = Literal["drained", "timed_out", "held"]
POLL_S = 0.1
READ_TIMEOUT_S = 2.0
# A gateway whose Redis is unreachable spends up to its connect timeout (1 s) before it
# falls back to polling Postgres; allow that on top of its poll interval.
RELOAD_MARGIN_S = 1.0


def min_wait_for(routes_poll_s: float) -> float:
    """How long a gateway that cannot report may take to find a switch by polling."""
    return routes_poll_s + RELOAD_MARGIN_S


async def gateway_reports(redis: Redis) -> list[GatewayReport]:
    """Every live gateway process's latest report (schemas/gateway.py)."""
    return await read_reports(redis)


def _settled(report: GatewayReport, model_id: str, generation: int | None,
             replica_ids: set[str]) -> bool:
    """This gateway routes `model_id` to `generation` (None: not at all) and has 0 in flight."""
    if report.generations.get(model_id) != generation:
        return False
    return all(report.inflight.get(r, 0) == 0 for r in replica_ids)


async def _reports(redis: Redis) -> list[GatewayReport] | None:
    """Every live gateway's report; None when the reports cannot be read."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await gateway_reports(redis)
    except (RedisError, OSError, TimeoutError):
        return None


def held_for(reports: list[GatewayReport], model_id: UUID) -> int:
    """Requests the gateways hold for `model_id` (no replica of it is routed to)."""
    return sum(r.held.get(str(model_id), 0) for r in reports)


async def wait_drained(redis: Redis, model_id: UUID, generation: int | None,
                       replica_ids: list[UUID], timeout_s: float,
                       min_wait_s: float = 0.0) -> bool:
    """True once drained, not before `min_wait_s`; False if `timeout_s` passed first (the
    caller removes them anyway). Nothing to drain returns at once."""
    return await _drain(redis, model_id, generation, replica_ids, timeout_s, min_wait_s,
                        call_off=False) == "drained"


async def drain_unless_held(redis: Redis, model_id: UUID, generation: int | None,
                            replica_ids: list[UUID], timeout_s: float,
                            min_wait_s: float = 0.0) -> Outcome:
    """As `wait_drained`, but "held" as soon as a gateway reports a request held for the
    model: a scale to zero whose replicas still run is called off (worker/scaling/scale_task.py).
    "drained" only from a read that shows no request held."""
    return await _drain(redis, model_id, generation, replica_ids, timeout_s, min_wait_s,
                        call_off=True)


async def _drain(redis: Redis, model_id: UUID, generation: int | None,
                 replica_ids: list[UUID], timeout_s: float, min_wait_s: float,
                 call_off: bool) -> Outcome:
    if not replica_ids:
        return "drained"
    wanted = {str(r) for r in replica_ids}
    loop = asyncio.get_running_loop()
    earliest, deadline = loop.time() + min_wait_s, loop.time() + timeout_s
    warned = False
    while True:
        reports = await _reports(redis)
        if reports is None and not warned:
            log.warning("drain_reports_unreadable", model=str(model_id), timeout_s=timeout_s)
            warned = True
        if call_off and reports is not None and held_for(reports, model_id) > 0:
            return "held"
        settled = reports is not None and all(
            _settled(r, str(model_id), generation, wanted) for r in reports)
        if settled and loop.time() >= earliest:
            return "drained"
        if not settled and loop.time() > deadline:
            return "timed_out"
        await asyncio.sleep(POLL_S)
