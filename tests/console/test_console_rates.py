"""Issue 17: the console's requests per second from gateway reports (pure arithmetic)."""

from schemas.gateway import GatewayReport
from service.console.traffic import Rates


def _report(gateway: str, at: float, **requests: int) -> GatewayReport:
    return GatewayReport(gateway_id=gateway, at=at, requests=requests)


def test_rate_is_the_counter_difference_over_time_summed_over_gateways() -> None:
    rates = Rates()
    rates.observe([_report("g1", 100.0, r1=10)], now=100.0)
    assert rates.per_replica() is None  # one reading: no rate yet
    rates.observe([_report("g1", 102.0, r1=50, r2=4), _report("g2", 101.0, r1=7)], now=102.0)
    assert rates.per_replica() == {"r1": 20.0, "r2": 2.0}
    # The same report read again changes nothing; g2's second reading adds its own rate.
    rates.observe([_report("g1", 102.0, r1=50, r2=4), _report("g2", 102.0, r1=9)], now=102.5)
    assert rates.per_replica() == {"r1": 22.0, "r2": 2.0}


def test_a_restarted_counter_and_a_silent_gateway_are_not_counted() -> None:
    rates = Rates()
    rates.observe([_report("g1", 100.0, r1=100), _report("g2", 100.0, r1=5)], now=100.0)
    rates.observe([_report("g1", 101.0, r1=3), _report("g2", 101.0, r1=8)], now=101.0)
    assert rates.per_replica() == {"r1": 3.0}  # g1's smaller counter: skipped
    rates.observe([_report("g1", 102.0, r1=4)], now=102.0)  # g2 stopped reporting
    assert rates.per_replica() == {"r1": 1.0}
    rates.observe([_report("g1", 102.0, r1=4)], now=200.0)  # g1's report is stale
    assert rates.per_replica() is None
