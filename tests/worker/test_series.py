"""Issue 31, the series over time: a worker's series loop turns the gateways' reports into
one row per (deployment, generation, 10 s bucket), summed over gateways, with p50 and p99
from the merged histograms; several workers writing the same bucket leave one row; the
retention prunes rows past 24 h; the API's reading groups long windows into steps.
Real Postgres and Redis; the replicas are the FakeRuntime's (no process)."""

import asyncio
import time
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from db import deployments, replicas, series, traffic
from schemas.errors import Invalid
from schemas.gateway import LATENCY_BOUNDS_S, GatewayReport, Latency
from schemas.queue import GATEWAY_KEY_PREFIX
from schemas.tasks import ReplicaState
from service.domain import series as series_domain
from tests.worker.decisions import a_model, deploy, scale
from worker import retention
from worker.context import WorkerContext
from worker.series import Readings, bucket_of, record_once


def _histogram(**counts: int) -> list[int]:
    """Counts per bucket, keyed by the bucket's bound in ms (`ms25=3`: 3 in the 25 ms one)."""
    out = [0] * (len(LATENCY_BOUNDS_S) + 1)
    for key, n in counts.items():
        out[LATENCY_BOUNDS_S.index(float(key[2:]) / 1000)] += n
    return out


async def _publish(ctx: WorkerContext, report: GatewayReport) -> None:
    await ctx.redis.set(GATEWAY_KEY_PREFIX + report.gateway_id, report.model_dump_json(), ex=30)


def _report(gateway: str, at: float, rid: str, requests: int, errors: int,
            hist: list[int], inflight: int = 0) -> GatewayReport:
    return GatewayReport(
        gateway_id=gateway, at=at, requests={rid: requests}, errors={rid: errors},
        inflight={rid: inflight} if inflight else {},
        replica_latency={rid: Latency(count=sum(hist), sum_s=0.0, buckets=hist)})


async def test_buckets_sum_the_gateways_and_merge_their_histograms(
        fake_ctx: WorkerContext) -> None:
    model = await a_model(fake_ctx)
    await deploy(fake_ctx, model, replicas=2)
    live = await replicas.list_for_model(fake_ctx.pool, model.id)
    r1, r2 = (str(r.id) for r in live)
    generation = live[0].generation
    t0 = time.time() - 4.0
    zero = _histogram()
    await _publish(fake_ctx, _report("g1", t0, r1, 100, 0, zero))
    await _publish(fake_ctx, _report("g2", t0, r2, 50, 1, zero))
    readings = Readings()
    bucket = bucket_of(time.time(), 10.0)
    assert await record_once(fake_ctx, readings, bucket) == 0, "a first reading writes nothing"

    # Over 2 s: g1 finished 40 on r1 (all ~25 ms), g2 20 on r2 (10 at 5 ms, 10 at 1 s), 4 of
    # them failed; 3 requests in flight now.
    await _publish(fake_ctx, _report("g1", t0 + 2.0, r1, 140, 0, _histogram(ms25=40),
                                     inflight=2))
    await _publish(fake_ctx, _report("g2", t0 + 2.0, r2, 70, 5, _histogram(ms5=10, ms1000=10),
                                     inflight=1))
    assert await record_once(fake_ctx, readings, bucket) == 1
    (row,) = await series.read(fake_ctx.pool, model.id, datetime.fromtimestamp(0, UTC), 100)
    assert row.generation == generation
    assert row.bucket == datetime.fromtimestamp(bucket, UTC)
    assert row.requests_per_s == pytest.approx(30.0)  # (40 + 20) / 2 s
    assert row.errors_per_s == pytest.approx(2.0)
    assert (row.replicas, row.desired, row.inflight) == (2, 2, 3)
    merged = Latency(count=60, buckets=row.latency_buckets)
    assert sum(row.latency_buckets) == 60
    assert 0.01 < (merged.quantile(0.5) or 0) <= 0.025  # 40 of 60 are in the 25 ms bucket
    assert 0.5 < (merged.quantile(0.99) or 0) <= 1.0

    # A second worker's loop measuring the same counters writes the same bucket: one row.
    other = Readings()
    await record_once(fake_ctx, other, bucket)
    await _publish(fake_ctx, _report("g1", t0 + 3.0, r1, 150, 0, _histogram(ms25=50)))
    await _publish(fake_ctx, _report("g2", t0 + 3.0, r2, 70, 5, _histogram(ms5=10, ms1000=10)))
    await record_once(fake_ctx, other, bucket)
    (row,) = await series.read(fake_ctx.pool, model.id, datetime.fromtimestamp(0, UTC), 100)
    assert row.requests_per_s == pytest.approx(10.0), "the later measure of the bucket wins"


async def test_a_generation_drained_before_the_tick_shows_the_replicas_that_served(
        fake_ctx: WorkerContext) -> None:
    """Traffic in a bucket never shows beside zero replicas: a generation whose replicas
    were drained and removed between its last requests and the tick counts the replicas
    that answered in the bucket."""
    model = await a_model(fake_ctx, "drained")
    await deploy(fake_ctx, model, replicas=2)
    live = await replicas.list_for_model(fake_ctx.pool, model.id)
    r1, r2 = (str(r.id) for r in live)
    t0 = time.time() - 4.0
    await _publish(fake_ctx, _report("g1", t0, r1, 10, 0, _histogram()))
    await _publish(fake_ctx, _report("g2", t0, r2, 10, 0, _histogram()))
    readings = Readings()
    bucket = bucket_of(time.time(), 10.0)
    assert await record_once(fake_ctx, readings, bucket) == 0
    await _publish(fake_ctx, _report("g1", t0 + 2.0, r1, 30, 0, _histogram(ms25=20)))
    await _publish(fake_ctx, _report("g2", t0 + 2.0, r2, 20, 0, _histogram(ms25=10)))
    await replicas.set_state(fake_ctx.pool, [r.id for r in live], ReplicaState.stopped)
    assert await record_once(fake_ctx, readings, bucket) == 1
    (row,) = await series.read(fake_ctx.pool, model.id, datetime.fromtimestamp(0, UTC), 100)
    assert row.requests_per_s == pytest.approx(15.0)
    assert (row.replicas, row.desired) == (2, 0), "both answered in the bucket; none is wanted"


async def test_the_reading_steps_long_windows_and_shows_events(fake_ctx: WorkerContext) -> None:
    model = await a_model(fake_ctx, "stepped")
    await deploy(fake_ctx, model, replicas=1)
    await scale(fake_ctx, model, 2)
    generation = (await replicas.list_for_model(fake_ctx.pool, model.id))[0].generation
    now = bucket_of(time.time(), 10.0)
    rows = [series.Bucket(model_id=model.id, generation=generation,
                          bucket=datetime.fromtimestamp(now - 10.0 * i, UTC),
                          requests_per_s=float(i % 4), errors_per_s=0.0,
                          latency_buckets=_histogram(ms10=1) if i % 2 else _histogram(ms100=1),
                          replicas=1 + (i < 100), desired=2, inflight=i % 7)
            for i in range(1, 721)]  # two hours of 10 s buckets
    await series.upsert(fake_ctx.pool, rows)

    hour = await series_domain.read(fake_ctx.pool, model.id, 3600, 10.0)
    (gen,) = hour.generations
    assert hour.step_s == 10 and 355 <= len(gen.points) <= 361
    assert gen.points[-1].replicas == 2 and gen.points[0].replicas == 1
    assert any(e.message for e in hour.events), "the rollout's events are markers"

    day = await series_domain.read(fake_ctx.pool, model.id, 86400, 10.0)
    assert day.step_s == 240
    (gen,) = day.generations
    assert len(gen.points) <= 31  # two hours in 4 min steps
    full = gen.points[5]
    assert full.requests_per_s == pytest.approx(1.5)  # the mean of 0, 1, 2, 3, ...
    assert full.inflight == 6
    assert full.p50_ms is not None and 5 < full.p50_ms <= 100  # half 10 ms, half 100 ms

    # Retention: rows past series_retention_h go.
    ctx = fake_ctx
    ctx.settings = ctx.settings.model_copy(update={"series_retention_h": 1.0})
    pruned = await retention.prune(ctx)
    assert pruned["series"] >= 359
    left = await series.read(fake_ctx.pool, model.id, datetime.fromtimestamp(0, UTC), 10_000)
    assert left and min(r.bucket for r in left).timestamp() >= now - 3600 - 20


@pytest.mark.parametrize("text, seconds", [(None, 3600), ("1h", 3600), ("15m", 900),
                                           ("90s", 90), ("24h", 86400), ("600", 600),
                                           ("25h", 86400), ("808373m", 86400), ("10s", 30),
                                           ("0", 30)])
def test_a_window_is_read(text: str | None, seconds: int) -> None:
    assert series_domain.parse_window(text) == seconds


@pytest.mark.parametrize("text", ["1d", "-1h", "1.5h", "h", "9" * 7, "", " 1h"])
def test_a_bad_window_is_refused(text: str) -> None:
    with pytest.raises(Invalid):
        series_domain.parse_window(text)


def test_a_long_window_has_at_most_360_points() -> None:
    assert series_domain.step_for(3600, 10.0) == 10
    assert series_domain.step_for(86400, 10.0) == 240
    assert series_domain.step_for(7200, 10.0) == 20


async def test_with_an_otlp_endpoint_the_api_and_worker_send_a_span_per_task(
        fake_ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 31: the task id follows a task as a span attribute from its acceptance (API)
    to its run (worker), over OTLP/HTTP to a sink (tests/gateway/test_tracing.py's)."""
    from schemas import tracing
    from tests.gateway.test_tracing import otlp_sink

    async with otlp_sink() as (sink, spans):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink)
        monkeypatch.setattr(tracing, "_TRACERS", {})
        monkeypatch.setattr(tracing, "_PROVIDERS", [])
        model = await a_model(fake_ctx, "spanned")
        task = await deploy(fake_ctx, model, replicas=1)
        await asyncio.to_thread(tracing.flush)
        for provider in tracing._PROVIDERS:
            provider.shutdown()
    named = {s.name: {a.key: a.value.string_value for a in s.attributes} for s in spans}
    assert named["accept deploy task"]["greenroom.task_id"] == str(task.id)
    assert named["deploy task"]["greenroom.task_id"] == str(task.id)


async def test_a_canary_candidate_carrying_traffic_counts_its_replicas(
        fake_ctx: WorkerContext) -> None:
    """Review (Low): a candidate's replicas stay `starting` while they carry the canary's
    share (worker/traffic_phase.py); the series counts them, not 0 of N."""
    model = await a_model(fake_ctx, "canaried")
    await deploy(fake_ctx, model, replicas=1)
    _, candidate = await deployments.begin_generation(fake_ctx.pool, model.id, "canaried")
    for n in range(2):
        replica_id = uuid4()
        await replicas.insert(fake_ctx.pool, replica_id=replica_id, model_id=model.id,
                              generation=candidate, task_id=None, runtime="fake")
        await replicas.set_started(fake_ctx.pool, replica_id, f"ref-{n}",
                                   f"http://127.0.0.1:{9000 + n}")

    def counted(rows: list[series.GenerationReplicas]) -> dict[int, tuple[int, int]]:
        return {r.generation: (r.ready, r.desired) for r in rows if r.model_id == model.id}

    before = counted(await series.generation_replicas(fake_ctx.pool))
    assert before[candidate] == (0, 2), "healthy but no traffic yet: starting"
    await traffic.set_split(fake_ctx.pool, model.id, traffic.Split(candidate, weight=25))
    during = counted(await series.generation_replicas(fake_ctx.pool))
    assert during[candidate] == (2, 2)
    assert during[candidate - 1] == (1, 1), "the serving generation as before"
