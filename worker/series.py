"""The series over time (issue 31): every `series_bucket_s` (10 s) each worker reads the
gateways' reports and writes one row per deployment generation to `deployment_series`.

Each gateway process reports cumulative counters per replica (requests, failed answers,
a latency histogram; schemas/gateway.py) and its requests in flight now. This loop keeps
each gateway's report from its previous tick; a replica's rate is the difference of its
counters over the time between the two reports, summed over gateways, and the latency
histograms' differences are merged the same way (so p50 and p99 are over every gateway's
requests). Replicas are mapped to their generation from Postgres, and each generation's
ready and desired replica counts are read there too; a bucket's replica count is at least
the generation's replicas that answered in it (one drained and removed just before the tick
served in its bucket).

Safe in every worker at once: the ticks fall on the same bucket boundaries, every worker
measures the same counters, and the write is an upsert keyed by (model, bucket,
generation). A worker that has no earlier reading (its first tick) writes nothing, so it
never overwrites another worker's measured bucket with zeros.
"""

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import structlog
from redis.exceptions import RedisError

from db import series
from db.errors import DatabaseError
from schemas.gateway import GatewayReport, Latency, read_reports
from schemas.queue import GATEWAY_TTL_S
from worker.context import WorkerContext

log = structlog.get_logger(__name__)
# After a bucket's boundary, wait this long so every gateway's report of that second is in.
TICK_OFFSET_S = 0.5
READ_TIMEOUT_S = 2.0


@dataclass(slots=True)
class ReplicaWindow:
    """One replica's traffic between two ticks, over every gateway."""

    requests_per_s: float = 0.0
    errors_per_s: float = 0.0
    latency: Latency = field(default_factory=Latency)
    inflight: int = 0
    serving: int = 0  # summed per generation: its replicas that answered in the window


class Readings:
    """Each gateway's report at this worker's previous tick."""

    def __init__(self) -> None:
        self._before: dict[str, GatewayReport] = {}
        self._first = True

    def window(self, reports: list[GatewayReport],
               now: float) -> dict[str, ReplicaWindow] | None:
        """Each replica's traffic since the previous call (replica id → window); None on
        the first call, when there is nothing to take a difference from."""
        fresh = {r.gateway_id: r for r in reports if r.at >= now - GATEWAY_TTL_S}
        first, self._first = self._first, False
        found: dict[str, ReplicaWindow] = {}
        for gateway_id, latest in fresh.items():
            for replica_id, count in latest.inflight.items():
                found.setdefault(replica_id, ReplicaWindow()).inflight += count
            before = self._before.get(gateway_id)
            if before is None or latest.at <= before.at:
                continue
            seconds = latest.at - before.at
            for replica_id, count in latest.requests.items():
                done = count - before.requests.get(replica_id, 0)
                if done > 0:
                    found.setdefault(replica_id, ReplicaWindow()).requests_per_s += done / seconds
            for replica_id, count in latest.errors.items():
                failed = count - before.errors.get(replica_id, 0)
                if failed > 0:
                    found.setdefault(replica_id, ReplicaWindow()).errors_per_s += failed / seconds
            for replica_id, counters in latest.replica_latency.items():
                window = counters.since(before.replica_latency.get(replica_id, Latency()))
                if window is not None and window.count:
                    entry = found.setdefault(replica_id, ReplicaWindow())
                    entry.latency = entry.latency + window
        self._before = fresh
        return None if first else found


def bucket_of(now: float, bucket_s: float) -> float:
    """The start of the bucket `now` falls in (Unix seconds)."""
    return (now // bucket_s) * bucket_s


async def record_once(ctx: WorkerContext, readings: Readings, bucket: float) -> int:
    """Read the gateways and write the bucket starting at `bucket`; the rows written."""
    async with asyncio.timeout(READ_TIMEOUT_S):
        reports = await read_reports(ctx.redis)
    windows = readings.window(reports, time.time())
    if windows is None:
        return 0
    owners = await series.replica_generations(ctx.pool, [UUID(r) for r in windows])
    per_generation: dict[tuple[UUID, int], ReplicaWindow] = {}
    for replica_id, window in windows.items():
        owner = owners.get(UUID(replica_id))
        if owner is None:
            continue  # a replica whose row is gone (its model was deleted)
        total = per_generation.setdefault(owner, ReplicaWindow())
        total.requests_per_s += window.requests_per_s
        total.errors_per_s += window.errors_per_s
        total.latency = total.latency + window.latency
        total.inflight += window.inflight
        total.serving += window.requests_per_s > 0
    counts = {(g.model_id, g.generation): g for g in await series.generation_replicas(ctx.pool)}
    at = datetime.fromtimestamp(bucket, UTC)
    rows = []
    for key in counts.keys() | per_generation.keys():
        traffic = per_generation.get(key, ReplicaWindow())
        replicas = counts.get(key)
        rows.append(series.Bucket(
            model_id=key[0], generation=key[1], bucket=at,
            requests_per_s=round(traffic.requests_per_s, 3),
            errors_per_s=round(traffic.errors_per_s, 3),
            latency_buckets=list(traffic.latency.buckets) if traffic.latency.count else [],
            # A generation removed before this tick still served in its bucket: its
            # replicas that answered count, so traffic never shows beside zero replicas.
            replicas=max(replicas.ready if replicas else 0, traffic.serving),
            desired=replicas.desired if replicas else 0, inflight=traffic.inflight))
    await series.upsert(ctx.pool, rows)
    return len(rows)


async def run_forever(ctx: WorkerContext) -> None:
    """Write a bucket at every boundary of `series_bucket_s` until cancelled; a failing tick
    is logged, never fatal."""
    bucket_s = ctx.settings.series_bucket_s
    readings = Readings()
    while True:
        now = time.time()
        boundary = bucket_of(now, bucket_s) + bucket_s
        await asyncio.sleep(boundary + TICK_OFFSET_S - now)
        try:
            # What was measured is the bucket that just ended.
            await record_once(ctx, readings, boundary - bucket_s)
        except (DatabaseError, RedisError, OSError, TimeoutError) as exc:
            log.warning("series_tick_failed", error=str(exc) or type(exc).__name__)
        except Exception:
            log.exception("series_tick_crashed")
