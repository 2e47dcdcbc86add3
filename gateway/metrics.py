"""Prometheus metrics of a gateway: inference forwarded per deployment, in flight per replica.

Each gateway has a registry of its own, so two in one process (tests) do not share series.
The two series every request moves (requests by status, latency) are plain counts the
scrape turns into series (`_AnswersCollector`): prometheus_client's Counter and Histogram
take a lock for each of the three values a request moves and walk the buckets in Python,
about 4 us a request at the gateway; a dict look-up and a bisect are a quarter of that.
"""

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from uuid import UUID

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edge.metrics import LATENCY_BUCKETS


class _InflightCollector(Collector):
    """Requests in flight per replica, read from the gateway at scrape time."""

    def __init__(self, inflight: Callable[[], dict[UUID, int]]) -> None:
        self._inflight = inflight

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("greenroom_gateway_inflight_requests",
                                   "Requests the gateway has in flight, per replica",
                                   labels=["replica"])
        for replica, count in self._inflight().items():
            family.add_metric([str(replica)], count)
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


@dataclass(slots=True)
class _Latency:
    """One deployment's latency histogram: counts per bucket (LATENCY_BUCKETS, then +Inf)."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum_s: float = 0.0
    created: float = field(default_factory=time.time)


REQUESTS = ("greenroom_gateway_requests", "Inference requests forwarded, by upstream status")
LATENCY = ("greenroom_gateway_request_duration_seconds",
           "Time from forwarding a request to having the replica's answer")
_BOUNDS = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]  # as Go writes these


class _AnswersCollector(Collector):
    """The requests counter and the latency histogram, from the gateway's counts, in the
    series prometheus_client's Counter and Histogram would write (`_created` included)."""

    def __init__(self, metrics: "GatewayMetrics") -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(*REQUESTS, labels=["deployment", "status"])
        for (deployment, status), (count, created) in list(self._metrics.requests.items()):
            requests.add_metric([deployment, status], count, created=created)
        yield requests
        latency = HistogramMetricFamily(*LATENCY, labels=["deployment"])
        for deployment, tally in list(self._metrics.latency.items()):
            running, cumulative = 0, []
            for bound, count in zip(_BOUNDS, tally.buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            latency.add_metric([deployment], cumulative, tally.sum_s)
            latency.add_sample(LATENCY[0] + "_created", {"deployment": deployment},
                               tally.created)
        yield latency

    def describe(self) -> Iterator[Metric]:
        return iter(())


class GatewayMetrics:
    """Inference the gateway forwarded, per deployment, and in flight per replica."""

    def __init__(self, inflight: Callable[[], dict[UUID, int]]) -> None:
        """`inflight`: requests in flight by replica, every routed replica included."""
        self.registry = CollectorRegistry(auto_describe=True)
        # (deployment, status) -> [requests, created]; deployment -> its latency histogram.
        self.requests: dict[tuple[str, str], list[float]] = {}
        self.latency: dict[str, _Latency] = {}
        self._statuses = {status: str(status) for status in range(100, 600)}
        self.registry.register(_AnswersCollector(self))
        self.upstream_errors = Counter(
            "greenroom_gateway_upstream_errors",
            "Replicas that could not be reached (each retried on another replica)",
            ["deployment"], registry=self.registry)
        # Issue 29: requests whose X-Request-Timeout passed (review 9: not only while held).
        self.expired = Counter(
            "greenroom_gateway_expired",
            "Requests past their X-Request-Timeout: while held, before forwarding, or at the "
            "replica (its 504)",
            ["deployment"], registry=self.registry)
        self.registry.register(_InflightCollector(inflight))

    def count(self, deployment: str, status: int) -> None:
        """One request of `deployment` answered `status` (the gateway's own 502 or 504)."""
        key = (deployment, self._statuses.get(status) or str(status))
        counted = self.requests.get(key)
        if counted is None:
            counted = self.requests[key] = [0, time.time()]
        counted[0] += 1

    def observe(self, deployment: str, status: int, seconds: float) -> None:
        """A replica answered `status` after `seconds`."""
        self.count(deployment, status)
        tally = self.latency.get(deployment)
        if tally is None:
            tally = self.latency[deployment] = _Latency()
        tally.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        tally.sum_s += seconds
