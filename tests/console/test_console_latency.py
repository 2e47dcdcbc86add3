"""Issue 17: latency per deployment from the gateways' reports: the gateway's counters,
their difference over a window, the sum over gateways, and the percentiles read from the
histogram (pure arithmetic)."""

from uuid import uuid4

import pytest

from gateway.latency import LatencyTally
from schemas.gateway import LATENCY_BOUNDS_S, GatewayReport, Latency
from service.console.overview import latency_out
from service.console.traffic import Rates

MODEL = uuid4()


def _report(gateway: str, at: float, tally: LatencyTally) -> GatewayReport:
    # Through JSON, as the reader gets it from Redis.
    report = GatewayReport(gateway_id=gateway, at=at, latency=tally.report())
    return GatewayReport.model_validate_json(report.model_dump_json())


def test_window_latency_is_the_difference_of_counters_summed_over_gateways() -> None:
    g1, g2 = LatencyTally(), LatencyTally()
    for _ in range(50):
        g1.observe(MODEL, 0.2)  # before the window: must not count
    rates = Rates()
    rates.observe([_report("g1", 100.0, g1), _report("g2", 100.0, g2)], now=100.0)
    assert rates.latency_per_model() is None  # one reading: no window yet
    for _ in range(90):
        g1.observe(MODEL, 0.003)  # (0.0025, 0.005] bucket
    for _ in range(10):
        g2.observe(MODEL, 0.040)  # (0.025, 0.05] bucket
    rates.observe([_report("g1", 101.0, g1), _report("g2", 101.0, g2)], now=101.0)
    window = (rates.latency_per_model() or {})[str(MODEL)]
    assert window.count == 100
    assert window.sum_s == pytest.approx(90 * 0.003 + 10 * 0.040)
    shown = latency_out(window)
    assert shown is not None
    assert shown.requests == 100 and shown.mean_ms == pytest.approx(6.7)
    assert shown.p50_ms is not None and 2.5 < shown.p50_ms <= 5.0  # where 90 % of them are
    assert shown.p99_ms is not None and 25.0 < shown.p99_ms <= 50.0  # the slow gateway's
    # No traffic in the next window: nothing to show (not a stale figure).
    rates.observe([_report("g1", 102.0, g1), _report("g2", 102.0, g2)], now=102.0)
    assert latency_out((rates.latency_per_model() or {}).get(str(MODEL))) is None


def test_a_restarted_gateway_and_a_writer_without_histogram() -> None:
    before = Latency(count=10, sum_s=1.0, buckets=[10] + [0] * len(LATENCY_BOUNDS_S))
    assert Latency(count=3, sum_s=0.1, buckets=[3] + [0] * len(LATENCY_BOUNDS_S)).since(
        before) is None  # a counter went back: the window is skipped
    # A writer with only count and sum (HAProxy's stats, say): a mean, no percentiles.
    plain = Latency(count=30, sum_s=0.9).since(Latency(count=10, sum_s=0.5))
    assert plain is not None
    shown = latency_out(plain)
    assert shown is not None and shown.mean_ms == pytest.approx(20.0)
    assert shown.p50_ms is None and shown.p99_ms is None
    # An old report without the field reads as no latency at all.
    old = GatewayReport.model_validate_json('{"gateway_id": "g", "at": 1.0}')
    assert old.latency == {}


def test_quantiles_interpolate_within_the_bucket_and_cap_at_the_last_bound() -> None:
    buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
    buckets[3] = 4  # (0.005, 0.01]
    assert Latency(count=4, sum_s=0.03, buckets=buckets).quantile(0.5) == pytest.approx(0.0075)
    buckets = [0] * len(LATENCY_BOUNDS_S) + [2]  # slower than the last bound
    assert Latency(count=2, sum_s=60.0, buckets=buckets).quantile(0.99) == LATENCY_BOUNDS_S[-1]
