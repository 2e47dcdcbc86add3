"""What a gateway reports to Redis about its traffic: the drain and the autoscaler read it.

Each gateway process writes one `GatewayReport` under `GATEWAY_KEY_PREFIX + gateway_id`
about every second (at once when a draining replica goes idle), with a TTL: a gateway
that stops reporting disappears. Several gateways (and several processes of one) each
write their own; a reader sums or checks them all.
"""

import structlog
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from schemas.queue import GATEWAY_KEY_PREFIX

log = structlog.get_logger(__name__)
# Upper bounds, in seconds, of the latency histogram's buckets; one more bucket past the last
# holds the slower requests. Fixed, so readers can subtract any two reports' buckets.
LATENCY_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)
# The per-generation histogram's bounds (`GenerationTraffic`): each 1.2 times the one
# before, 0.25 ms to about 60 s, so a p99 is read to within 20 %: the canary judge holds a
# candidate's p99 to 1.5 times the serving one's, which the bounds above (2 to 2.5 times
# apart) cannot tell (a 20 ms answer 6 ms late moved a p99 from 25 to 50 ms).
TRAFFIC_BOUNDS_S = tuple(round(0.00025 * 1.2 ** i, 7) for i in range(69))


class Latency(BaseModel):
    """Requests a gateway finished for one deployment since it started, and the time they
    took: counters, so a reader takes the difference between two reports for a window."""

    count: int = 0
    sum_s: float = 0.0
    # Requests per bucket of LATENCY_BOUNDS_S (a request of t seconds counts in the first
    # bucket whose bound is >= t), then the slower ones: len(LATENCY_BOUNDS_S) + 1 counts.
    # Empty: the writer keeps no histogram (a mean can still be read from count and sum).
    buckets: list[int] = Field(default_factory=list)

    def since(self, before: "Latency") -> "Latency | None":
        """What was finished between `before` and this; None if a counter went back (the
        gateway restarted under the same id)."""
        if self.count < before.count:
            return None
        buckets: list[int] = []
        if not before.count and not before.buckets:
            buckets = list(self.buckets)  # nothing before (a model new to this gateway)
        elif len(self.buckets) == len(before.buckets):
            buckets = [a - b for a, b in zip(self.buckets, before.buckets, strict=True)]
            if any(b < 0 for b in buckets):
                return None
        return Latency(count=self.count - before.count, sum_s=self.sum_s - before.sum_s,
                       buckets=buckets)

    def __add__(self, other: "Latency") -> "Latency":
        buckets: list[int] = []
        if len(self.buckets) == len(other.buckets):
            buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        elif not self.count or not other.count:
            buckets = self.buckets or other.buckets  # the empty side adds nothing
        return Latency(count=self.count + other.count, sum_s=self.sum_s + other.sum_s,
                       buckets=buckets)

    def quantile(self, q: float,
                 bounds: tuple[float, ...] = LATENCY_BOUNDS_S) -> float | None:
        """The q-quantile in seconds, interpolated within its bucket as Prometheus'
        histogram_quantile does (past the last bound: that bound); None without a
        histogram or requests. `bounds`: the histogram's (TRAFFIC_BOUNDS_S for a
        generation's)."""
        total = sum(self.buckets)
        if len(self.buckets) != len(bounds) + 1 or total == 0:
            return None
        rank, below = q * total, 0
        for i, count in enumerate(self.buckets):
            if count and below + count >= rank:
                if i == len(bounds):
                    return bounds[-1]
                lower = bounds[i - 1] if i else 0.0
                return lower + (bounds[i] - lower) * (rank - below) / count
            below += count
        return bounds[-1]


class GenerationTraffic(BaseModel):
    """What a gateway carried for one generation of a deployment since it started
    (counters, like `Latency`): the canary judge (worker/canary.py) reads two reports'
    difference. `errors`: answers of 5xx and requests that could not reach a replica."""

    requests: int = 0
    errors: int = 0
    # Its buckets are TRAFFIC_BOUNDS_S's (finer than a deployment's LATENCY_BOUNDS_S).
    latency: Latency = Field(default_factory=Latency)
    # Shadow requests only: answers compared with the serving answer (cosine of the
    # vectors, summed over every input; `compared` inputs) — a mean is sum / compared.
    compared: int = 0
    cosine_sum: float = 0.0

    def quantile(self, q: float) -> float | None:
        """The q-quantile of its latency in seconds (None without requests)."""
        return self.latency.quantile(q, TRAFFIC_BOUNDS_S)

    def since(self, before: "GenerationTraffic") -> "GenerationTraffic | None":
        """Counted between `before` and this; None if a counter went back."""
        latency = self.latency.since(before.latency)
        if latency is None or self.requests < before.requests or self.errors < before.errors:
            return None
        return GenerationTraffic(requests=self.requests - before.requests,
                                 errors=self.errors - before.errors, latency=latency,
                                 compared=self.compared - before.compared,
                                 cosine_sum=self.cosine_sum - before.cosine_sum)

    def __add__(self, other: "GenerationTraffic") -> "GenerationTraffic":
        return GenerationTraffic(requests=self.requests + other.requests,
                                 errors=self.errors + other.errors,
                                 latency=self.latency + other.latency,
                                 compared=self.compared + other.compared,
                                 cosine_sum=self.cosine_sum + other.cosine_sum)


class GatewayReport(BaseModel):
    """One gateway process's view of the routes it serves and the traffic it carries."""

    gateway_id: str
    # Unix time the report was written; readers ignore reports much older than the TTL.
    at: float
    # model id → the generation this gateway routes to (absent: it routes nowhere).
    generations: dict[str, int] = Field(default_factory=dict)
    # replica id → requests in flight to it now (absent: none).
    inflight: dict[str, int] = Field(default_factory=dict)
    # replica id → requests this gateway has finished on it since it started (a counter:
    # the autoscaler takes differences between two reports for a request rate).
    requests: dict[str, int] = Field(default_factory=dict)
    # model id → requests held waiting for a first ready replica (a deployment scaled to
    # zero): the autoscaler reads it as demand and starts one.
    held: dict[str, int] = Field(default_factory=dict)
    # model id → requests finished for it and their latency (counters, like `requests`;
    # absent: none, or a writer that does not measure latency).
    latency: dict[str, Latency] = Field(default_factory=dict)
    # model ids whose requests in flight jumped since this gateway's previous report
    # (gateway/load_signal.py): the autoscaler may panic on this one sample.
    jumped: list[str] = Field(default_factory=list)
    # replica id → answers this gateway failed for it since it started (a counter: a 5xx
    # from the replica, or the gateway's own 502/504), for the series over time (issue 31).
    errors: dict[str, int] = Field(default_factory=dict)
    # replica id → requests finished on it and their latency (counters, like `latency`, but
    # per replica, so the series reads latency per generation).
    replica_latency: dict[str, Latency] = Field(default_factory=dict)
    # model id → generation (as a string) → what this gateway carried for it (counters;
    # shadow requests under their own generation too, so a shadowed candidate is counted).
    traffic: dict[str, dict[str, GenerationTraffic]] = Field(default_factory=dict)


async def read_reports(redis: Redis) -> list[GatewayReport]:
    """Every live gateway process's latest report (one that cannot be read is skipped)."""
    keys = [k async for k in redis.scan_iter(match=GATEWAY_KEY_PREFIX + "*", count=100)]
    if not keys:
        return []
    reports = []
    for value in await redis.mget(keys):
        if not value:
            continue  # expired between SCAN and MGET
        try:
            reports.append(GatewayReport.model_validate_json(value))
        except ValidationError:
            log.warning("gateway_report_unreadable")
    return reports


# Every answer a replica gave, through either engine, names the generation and the revision
# it pinned (issue 26).
GENERATION_HEADER = "X-Greenroom-Generation"
REVISION_HEADER = "X-Greenroom-Revision"
