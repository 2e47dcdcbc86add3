"""The canary judge (worker/canary.py) on counters built by hand: pure and fast; and the
quota a canary needs (worker/admission/quotas.py) on the FakeRuntime."""

import pytest
from pydantic import ValidationError

from db import owner_quotas
from schemas.gateway import TRAFFIC_BOUNDS_S, GatewayReport, GenerationTraffic, Latency
from schemas.rollout import CanaryConfig, RolloutConfig
from schemas.tasks import TaskStatus
from tests.worker.decisions import a_model, deploy
from tests.worker.fake_runtime import FakeRuntime
from worker.canary import judge, totals, window
from worker.context import WorkerContext


def traffic(requests: int, errors: int = 0, seconds: float = 0.004) -> GenerationTraffic:
    """`requests` that all took `seconds` (so every quantile falls in that one bucket)."""
    buckets = [0] * (len(TRAFFIC_BOUNDS_S) + 1)
    index = next((i for i, b in enumerate(TRAFFIC_BOUNDS_S) if seconds <= b),
                 len(TRAFFIC_BOUNDS_S))
    buckets[index] = requests
    return GenerationTraffic(requests=requests, errors=errors, latency=Latency(
        count=requests, sum_s=requests * seconds, buckets=buckets))


CONFIG = CanaryConfig(min_requests=100)


def test_a_candidate_as_good_as_the_serving_one_passes() -> None:
    record = judge(5, 1, traffic(1900, errors=2), 2, traffic(100, errors=1), CONFIG)
    assert record.verdict == "pass", record.reasons
    assert record.weight == 5
    assert (record.serving.generation, record.serving.requests) == (1, 1900)
    assert record.candidate.error_rate == 0.01
    assert record.candidate.p50_ms is not None and record.candidate.p99_ms is not None


def test_ten_percent_errors_fail() -> None:
    record = judge(5, 1, traffic(1900), 2, traffic(100, errors=10), CONFIG)
    assert record.verdict == "fail"
    assert "error rate 0.1000 > serving 0.0000" in record.reasons[0]


def test_error_rate_is_judged_against_the_serving_rate_plus_the_delta() -> None:
    # serving 5 %, candidate 6 %: within 0.01; 6.5 %: past it.
    assert judge(25, 1, traffic(1000, 50), 2, traffic(1000, 60), CONFIG).verdict == "pass"
    assert judge(25, 1, traffic(1000, 50), 2, traffic(1000, 65), CONFIG).verdict == "fail"


def test_ten_times_slower_fails_on_p99() -> None:
    record = judge(5, 1, traffic(1900, seconds=0.004), 2, traffic(100, seconds=0.04), CONFIG)
    assert record.verdict == "fail"
    assert record.reasons[0].startswith("p99 ")
    assert record.candidate.p99_ms is not None and record.serving.p99_ms is not None
    assert record.candidate.p99_ms > 1.5 * record.serving.p99_ms


def test_a_p99_within_the_slack_passes_whatever_the_ratio() -> None:
    # p99 about 0.4 ms against 2 ms: over 1.5x, but within 2 ms.
    record = judge(5, 1, traffic(1000, seconds=0.0004), 2, traffic(100, seconds=0.002),
                   CanaryConfig(min_requests=100, p99_slack_ms=2))
    assert record.verdict == "pass", record.reasons
    strict = CanaryConfig(min_requests=100, p99_slack_ms=0)
    assert judge(5, 1, traffic(1000, seconds=0.0004), 2, traffic(100, seconds=0.002),
                 strict).verdict == "fail"


def test_too_few_candidate_requests_wait() -> None:
    record = judge(5, 1, traffic(1000), 2, traffic(99, errors=1), CONFIG)
    assert record.verdict == "wait"
    assert record.reasons == ["99 of 100 candidate requests so far"]


def test_errors_past_what_min_requests_allows_fail_before_min_requests() -> None:
    # 100 requests at serving 0 % + 0.01 allow 1 error: 2 already cannot pass.
    record = judge(5, 1, traffic(1000), 2, traffic(10, errors=2), CONFIG)
    assert record.verdict == "fail"
    assert record.reasons == ["2 errors in 10 requests: past the 1.0 that min_requests 100 "
                              "allows"]
    assert judge(5, 1, traffic(1000), 2, traffic(10, errors=1), CONFIG).verdict == "wait"


def test_the_last_step_compares_with_the_serving_baseline() -> None:
    # At 100 % the serving generation carries nothing: its traffic since the canary began
    # is the reference (here slow, so the slow candidate passes on p99).
    baseline = traffic(5000, errors=0, seconds=0.04)
    record = judge(100, 1, GenerationTraffic(), 2, traffic(200, seconds=0.04), CONFIG,
                   baseline=baseline)
    assert record.verdict == "pass", record.reasons
    assert judge(100, 1, GenerationTraffic(), 2, traffic(200, errors=20), CONFIG,
                 baseline=baseline).verdict == "fail"


def test_window_sums_gateways_and_survives_a_restart() -> None:
    def report(gateway: str, t: GenerationTraffic) -> GatewayReport:
        return GatewayReport(gateway_id=gateway, at=0, traffic={"m": {"2": t}})

    before = totals([report("a", traffic(10)), report("b", traffic(50))], "m", 2)
    after = totals([report("a", traffic(30, errors=3)), report("b", traffic(5)),
                    report("c", traffic(7))], "m", 2)
    step = window(before, after)
    # a: 20 new; b restarted: its 5 count whole; c is new: 7.
    assert (step.requests, step.errors) == (32, 3)
    assert sum(step.latency.buckets) == 32
    assert totals([report("a", traffic(1))], "m", 3) == {}


def test_rollout_config_defaults_and_bounds() -> None:
    config = RolloutConfig()
    assert config.strategy == "green"
    assert config.canary.steps == [5, 25, 50, 100]
    assert config.canary.max_error_rate_delta == 0.01 and config.canary.max_p99_ratio == 1.5
    assert RolloutConfig.model_validate(
        {"strategy": "shadow", "shadow": {"percent": 20, "duration_s": 5}}).shadow.percent == 20
    for bad in ([50, 25], [0, 100], [5, 101], []):
        with pytest.raises(ValidationError):
            CanaryConfig(steps=bad)
    with pytest.raises(ValidationError):
        RolloutConfig.model_validate({"strategy": "blue"})


def test_the_serving_p99_is_the_higher_of_the_step_and_the_canary_so_far() -> None:
    # In this step the serving generation's few requests were all fast; since the canary
    # began its tail is 20 ms: a candidate at 20 ms is as good as it.
    step, since = traffic(30, seconds=0.004), traffic(3000, seconds=0.02)
    assert judge(5, 1, step, 2, traffic(100, seconds=0.02), CONFIG,
                 baseline=since).verdict == "pass"
    assert judge(5, 1, step, 2, traffic(100, seconds=0.02), CONFIG).verdict == "fail"
    # Ten times the tail since the canary began still fails.
    assert judge(5, 1, step, 2, traffic(100, seconds=0.2), CONFIG,
                 baseline=since).verdict == "fail"


def test_a_few_late_answers_do_not_double_a_p99() -> None:
    """Seen in the suite with the old buckets (10, 25, 50 ms): 20 ms answers, a few of the
    candidate's 6 ms late, read as p99 25 ms against 43.5 ms. The generation's buckets are
    1.2x apart: 26 ms against 20 ms passes, 35 ms does not."""
    serving = traffic(500, seconds=0.020)
    late = traffic(98, seconds=0.020) + traffic(2, seconds=0.026)
    assert judge(20, 1, serving, 2, late, CONFIG).verdict == "pass"
    slow = traffic(98, seconds=0.020) + traffic(2, seconds=0.035)
    assert judge(20, 1, serving, 2, slow, CONFIG).verdict == "fail"


async def test_a_canary_needs_quota_for_both_generations(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """A canary runs the serving and the new generation together for its whole traffic
    phase: the owner's replica quota must hold both (a green rollout's brief overlap at
    its switch is not counted, as before)."""
    model = await a_model(fake_ctx, "quoted")
    await owner_quotas.set_overrides(fake_ctx.pool, model.owner_id, {"max_replicas": 3})
    assert (await deploy(fake_ctx, model, replicas=2)).status == TaskStatus.done
    canary = {"strategy": "canary", "canary": {"steps": [50], "step_s": 1}}
    refused = await deploy(fake_ctx, model, replicas=2, rollout=canary)
    assert refused.status == TaskStatus.refused, refused.detail
    assert "replicas" in (refused.detail or "") and refused.metadata["quota"]
    assert (await deploy(fake_ctx, model, replicas=2)).status == TaskStatus.done
