"""Requests per second and latency per deployment, from what the gateways report to Redis.

Each gateway process writes a `GatewayReport` about every second with a cumulative
request counter per replica (schemas/gateway.py). This API process keeps the last two
distinct readings of each gateway; a replica's rate is the difference of its counter
between them over the time between them, and a deployment's rate is the sum over its
live replicas and every gateway. Latency is read the same way from each gateway's
per-model counters of finished requests, summed time and histogram buckets: the mean and
percentiles of what finished between the last two readings. No reading yet, or no
gateway reporting: no rate and no latency.
"""

import asyncio
import time

import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.gateway import GatewayReport, Latency, read_reports
from schemas.queue import GATEWAY_TTL_S

log = structlog.get_logger()


class Rates:
    """The last two distinct readings of each gateway, and the rates between them."""

    def __init__(self) -> None:
        # gateway id → (the reading before, the latest reading)
        self._readings: dict[str, tuple[GatewayReport | None, GatewayReport]] = {}

    def observe(self, reports: list[GatewayReport], now: float) -> None:
        fresh = {r.gateway_id: r for r in reports if r.at >= now - GATEWAY_TTL_S}
        for gone in set(self._readings) - set(fresh):
            del self._readings[gone]  # stopped reporting: its traffic is no longer counted
        for gateway_id, report in fresh.items():
            before = self._readings.get(gateway_id)
            if before is None:
                self._readings[gateway_id] = (None, report)
            elif report.at > before[1].at:
                self._readings[gateway_id] = (before[1], report)

    def per_replica(self) -> dict[str, float] | None:
        """Requests per second by replica id, summed over gateways; None before any gateway
        has reported twice."""
        rates: dict[str, float] = {}
        measured = False
        for before, latest in self._readings.values():
            if before is None:
                continue
            measured = True
            seconds = latest.at - before.at
            for replica_id, count in latest.requests.items():
                done = count - before.requests.get(replica_id, 0)
                if done >= 0:  # a smaller counter: the gateway restarted under the same id
                    rates[replica_id] = rates.get(replica_id, 0.0) + done / seconds
        return rates if measured else None

    def latency_per_model(self) -> dict[str, Latency] | None:
        """What the gateways finished per model id between their last two readings (count,
        summed time, histogram), summed over gateways; None before any reported twice."""
        found: dict[str, Latency] = {}
        measured = False
        for before, latest in self._readings.values():
            if before is None:
                continue
            measured = True
            for model_id, counters in latest.latency.items():
                window = counters.since(before.latency.get(model_id, Latency()))
                if window is not None:
                    found[model_id] = found.get(model_id, Latency()) + window
        return found if measured else None


RATES = web.AppKey("console_rates", Rates)
READ_TIMEOUT_S = 1.0


async def current(app: web.Application, redis: Redis) -> dict[str, float] | None:
    """Read the gateways' reports now; requests per second by replica (None: unknown)."""
    rates = app[RATES]
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            reports = await read_reports(redis)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("gateway_reports_unreadable", error=str(exc))
        return None
    rates.observe(reports, time.time())
    return rates.per_replica()
