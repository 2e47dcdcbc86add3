"""gateway/metrics.py: the requests and latency series the gateway counts itself read exactly
as prometheus_client's Counter and Histogram would write them for the same requests."""

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from edge.metrics import LATENCY_BUCKETS
from gateway.metrics import LATENCY, REQUESTS, GatewayMetrics

ANSWERS = [("a", 200, 0.003), ("a", 200, 0.0007), ("a", 500, 0.2), ("b", 200, 31.0),
           ("a", 200, 0.0025), ("a", 200, 0.001), ("b", 404, 0.0)]


def _text(registry: CollectorRegistry) -> str:
    """The exposition, with the `_created` times (when each series began) left out."""
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", generate_latest(registry).decode())


def test_the_counted_series_are_prometheus_clients_own() -> None:
    ours = GatewayMetrics(lambda: {})
    reference = CollectorRegistry()
    requests = Counter(*REQUESTS, ["deployment", "status"], registry=reference)
    latency = Histogram(*LATENCY, ["deployment"], buckets=LATENCY_BUCKETS, registry=reference)
    for deployment, status, seconds in ANSWERS:
        ours.observe(deployment, status, seconds)
        requests.labels(deployment, str(status)).inc()
        latency.labels(deployment).observe(seconds)
    ours.count("a", 502)  # the gateway's own 502: counted, no latency
    requests.labels("a", "502").inc()
    text = _text(ours.registry)
    assert text.startswith(_text(reference))
    assert 'greenroom_gateway_requests_total{deployment="a",status="200"} 4.0' in text
    assert 'greenroom_gateway_request_duration_seconds_count{deployment="b"} 2.0' in text
