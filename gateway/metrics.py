"""Prometheus metrics of a gateway: inference forwarded per deployment, in flight per replica.

Each gateway has a registry of its own, so two in one process (tests) do not share series.
"""

from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
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


class GatewayMetrics:
    """Inference the gateway forwarded, per deployment, and in flight per replica."""

    def __init__(self, inflight: Callable[[], dict[UUID, int]]) -> None:
        """`inflight`: requests in flight by replica, every routed replica included."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "greenroom_gateway_requests", "Inference requests forwarded, by upstream status",
            ["deployment", "status"], registry=self.registry)
        self.latency = Histogram(
            "greenroom_gateway_request_duration_seconds",
            "Time from forwarding a request to having the replica's answer",
            ["deployment"], buckets=LATENCY_BUCKETS, registry=self.registry)
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
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, deployment: str, status: int, seconds: float) -> None:
        children = self._children.get((deployment, status))
        if children is None:
            children = (self.requests.labels(deployment, str(status)),
                        self.latency.labels(deployment))
            self._children[(deployment, status)] = children
        children[0].inc()
        children[1].observe(seconds)
