"""What the API's and the gateway's Prometheus metrics share: the latency buckets and the
text format. Each process's own series: service/metrics.py, gateway/metrics.py."""

from prometheus_client import CollectorRegistry, generate_latest

# Seconds; from a cached lookup (~1 ms) to a slow inference or a long poll.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


def exposition(*registries: CollectorRegistry) -> bytes:
    """The text format of every series in these registries."""
    return b"".join(generate_latest(registry) for registry in registries)
