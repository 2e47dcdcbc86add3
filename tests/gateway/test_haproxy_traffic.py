"""The HAProxy engine's per-generation counts (gateway/haproxy/traffic.py) as decisions,
fast: counter increases go to the generation a slot serves, log lines to its histogram.
HAProxy itself feeds them in tests/gateway/test_traffic_split.py and test_haproxy_canary.py."""

from uuid import uuid4

from gateway.haproxy.runtime_api import BackendStat
from gateway.haproxy.traffic import HaproxyTraffic
from schemas.gateway import TRAFFIC_BOUNDS_S

MODEL = uuid4()


def test_counter_increases_go_to_the_generation_the_slot_serves() -> None:
    counts = HaproxyTraffic()
    serving, candidate = {"slot0": (MODEL, 1)}, {"slot0": (MODEL, 1), "slot1": (MODEL, 2)}
    # First read: all a slot carried since HAProxy started is its generation's.
    counts.count(serving, [BackendStat("slot0", 10, 1)])
    counts.count(candidate, [BackendStat("slot0", 25, 1), BackendStat("slot1", 4, 2)])
    report = counts.report({(MODEL, 1), (MODEL, 2)})[str(MODEL)]
    assert (report["1"].requests, report["1"].errors) == (25, 1)
    assert (report["2"].requests, report["2"].errors) == (4, 2)
    # A slot read while it served no generation (drained, free) counts for nobody, and
    # its next generation counts from that read on, not from HAProxy's start.
    counts.count({}, [BackendStat("slot1", 6, 2)])
    counts.count({"slot1": (MODEL, 3)}, [BackendStat("slot1", 9, 3)])
    report = counts.report({(MODEL, 3)})[str(MODEL)]
    assert list(report) == ["3"] and (report["3"].requests, report["3"].errors) == (3, 1)


def test_log_lines_fill_the_histogram_of_their_slots_generation() -> None:
    counts = HaproxyTraffic()
    owners = {"slot0": (MODEL, 1), "slot1": (MODEL, 2)}
    for line in (b"slot0 0\n", b"slot0 19", b"slot1 200", b"slot1 -1", b"canary 3",
                 b"slot9 5", b"garbage"):
        counts.line(line, owners)
    report = counts.report({(MODEL, 1), (MODEL, 2)})[str(MODEL)]
    serving, tried = report["1"].latency, report["2"].latency
    # Whole milliseconds, truncated by HAProxy: each line is the middle of its millisecond.
    assert serving.count == 2 and abs(serving.sum_s - 0.02) < 1e-9
    assert tried.count == 1 and abs(tried.sum_s - 0.2005) < 1e-9
    quantile = report["2"].quantile(0.5)
    assert quantile is not None and 0.2005 / 1.2 <= quantile <= 0.2005 * 1.2
    assert len(serving.buckets) == len(TRAFFIC_BOUNDS_S) + 1
    # Lines are a histogram only: requests come from the counters.
    assert report["1"].requests == 0 and counts.lines == 7
