"""The HAProxy engine's per-generation counts (gateway/haproxy/traffic.py) as decisions,
fast: counter increases go to the generation a slot serves, log lines to its histogram.
HAProxy itself feeds them in tests/gateway/test_traffic_split.py and test_haproxy_canary.py."""

import asyncio
from pathlib import Path
from uuid import uuid4

from gateway.haproxy.runtime_api import BackendStat
from gateway.haproxy.traffic import READ_PAUSE_S, HaproxyTraffic, bind, listen
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


async def test_lines_split_across_reads_are_folded_whole(tmp_path: Path) -> None:
    """The controller's side of the ring's stream (a real unix socket): a line cut in two
    by the stream is read as one; lines are read in batches (READ_PAUSE_S apart)."""
    counts = HaproxyTraffic()
    owners = {"slot0": (MODEL, 1)}
    path = tmp_path / "traffic.sock"
    server = await listen(bind(path), counts, lambda: owners)
    assert path.stat().st_mode & 0o777 == 0o600
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"slot0 1\nslot0 ")
        await writer.drain()
        await asyncio.sleep(READ_PAUSE_S * 2)
        writer.write(b"30\nslot0 2\n")
        await writer.drain()
        for _ in range(50):
            if counts.lines == 3:
                break
            await asyncio.sleep(READ_PAUSE_S)
        writer.close()
    finally:
        server.close()
    latency = counts.report({(MODEL, 1)})[str(MODEL)]["1"].latency
    assert counts.lines == 3 and latency.count == 3
    assert abs(latency.sum_s - (0.0015 + 0.0305 + 0.0025)) < 1e-9
