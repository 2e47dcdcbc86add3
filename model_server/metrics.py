"""Prometheus metrics, kept in one registry per app (never the global one)."""

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from model_server.lanes import LANES

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    """The server's metrics and the registry that renders them."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "model_server_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "model_server_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "model_server_requests_in_flight", "HTTP requests being handled", registry=r
        )
        self.batch_size = Histogram(
            "model_server_batch_size",
            "Inputs per computed batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "model_server_batch_duration_seconds",
            "Compute time per batch (tokenize and forward pass)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "model_server_queue_depth", "Inputs waiting for a batch", registry=r
        )
        self.embeddings = Counter("model_server_embeddings", "Inputs embedded", registry=r)
        # Issue 29: work dropped from a lane's queue, never computed.
        self.expired = Counter(
            "model_server_expired",
            "Requests dropped before compute because their X-Request-Timeout passed",
            ["lane"], registry=r)
        self.abandoned = Counter(
            "model_server_abandoned",
            "Requests dropped before compute because their caller disconnected",
            ["lane"], registry=r)
        self.lane_batches = Counter(
            "model_server_lane_inputs",
            "Inputs computed, by lane", ["lane"], registry=r)
        for lane in LANES:  # every series present from the start, at 0
            for counter in (self.expired, self.abandoned, self.lane_batches):
                counter.labels(lane)
        self._counters: dict[tuple[str, int], Any] = {}
        self._latencies: dict[str, Any] = {}
        # Gauges read at scrape time: a locked set per request would cost every request.
        self.handling = 0
        self.in_flight.set_function(lambda: self.handling)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and time it. The labelled children are cached: the
        ``labels()`` lookups were a tenth of the event loop's time per request."""
        counter = self._counters.get((route, status))
        if counter is None:
            counter = self._counters[route, status] = self.requests.labels(route, str(status))
        latency = self._latencies.get(route)
        if latency is None:
            latency = self._latencies[route] = self.request_latency.labels(route)
        counter.inc()
        latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
