"""Prometheus metrics of the API process: requests by route template, and the gateway's.

Each app (and each gateway) has a registry of its own, so two apps in one process (tests)
do not share series. Names follow Prometheus' conventions: base units, `_total` counters.
"""

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from uuid import UUID

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Seconds; from a cached lookup (~1 ms) to a slow inference or a long poll.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
UNMATCHED = "unmatched"  # a path no route matches: one label value, not one per path
# Any other method a client invents is counted as OTHER_METHOD: one series, not one each.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


class ApiMetrics:
    """Requests the API answered, by method, route template and status, and their latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "greenroom_api_requests", "HTTP requests answered by the API",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "greenroom_api_request_duration_seconds", "Time to answer an HTTP request",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # Labelled children cached: `labels()` takes a lock and builds a key per call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((method, route, status))
        if children is None:
            children = (self.requests.labels(method, route, str(status)),
                        self.latency.labels(method, route))
            self._children[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def middleware(self) -> Middleware:
        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                method = request.method if request.method in KNOWN_METHODS else OTHER_METHOD
                self.observe(method, _route_template(request), status,
                             time.perf_counter() - started)
        return measure


def _route_template(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else UNMATCHED


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


def exposition(*registries: CollectorRegistry) -> bytes:
    """The text format of every series in these registries."""
    return b"".join(generate_latest(registry) for registry in registries)
