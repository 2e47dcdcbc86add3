"""The canary judge: is the candidate generation as good as the serving one in a step?

Pure functions, no I/O: the traffic phase (worker/traffic_phase.py) reads the gateways'
reports (schemas/gateway.py `GatewayReport.traffic`), takes each generation's traffic in
the step with `window`, and asks `judge`. A step is judged on at least `min_requests` of
the candidate's: its error rate must stay within the serving one's + `max_error_rate_delta`
and its p99 within the serving one's x `max_p99_ratio` (or `p99_slack_ms` of it). When
the serving generation carried too few requests in the step to compare with (the last
step gives it none), the serving traffic since the canary began is the reference; the
serving p99 is the higher of the step's and the one since the canary began. A candidate
whose errors already exceed what its error rate may reach at `min_requests` fails before
it has them (a candidate failing every request is stopped after a few, not 100).
"""

from collections.abc import Iterable

from schemas.gateway import GatewayReport, GenerationTraffic
from schemas.rollout import CanaryConfig, GenerationFigures, StepRecord

# Fewer serving requests than this in a step: compare with the serving baseline instead.
MIN_REFERENCE_REQUESTS = 20


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def figures(generation: int, traffic: GenerationTraffic) -> GenerationFigures:
    """A generation's requests, error rate, p50 and p99 (ms) from its counters."""
    rate = traffic.errors / traffic.requests if traffic.requests else None
    return GenerationFigures(
        generation=generation, requests=traffic.requests, errors=traffic.errors,
        error_rate=None if rate is None else round(rate, 6),
        p50_ms=_ms(traffic.quantile(0.5)), p99_ms=_ms(traffic.quantile(0.99)))


def totals(reports: Iterable[GatewayReport], model_id: str, generation: int
           ) -> dict[str, GenerationTraffic]:
    """Gateway id → its counters for one generation (absent: it carried none)."""
    key = str(generation)
    return {r.gateway_id: r.traffic[model_id][key] for r in reports
            if key in r.traffic.get(model_id, {})}


def window(before: dict[str, GenerationTraffic], after: dict[str, GenerationTraffic]
           ) -> GenerationTraffic:
    """What every gateway carried between two `totals`: a gateway new since `before`
    counts whole, one whose counters went back (it restarted) counts from zero."""
    out = GenerationTraffic()
    for gateway_id, now in after.items():
        then = before.get(gateway_id)
        part = now if then is None else now.since(then)
        out = out + (now if part is None else part)
    return out


def _reference_p99(step: GenerationTraffic, baseline: GenerationTraffic | None
                   ) -> float | None:
    """The serving p99 a candidate's is held to: the step's, or the one since the canary
    began if higher. A step's p99 comes from few requests (a few dozen at a small weight)
    and is then about their maximum, noisy both ways; the serving generation's traffic
    since the canary began, on the same machines, shows the tail they really have."""
    found = [p for p in (step.quantile(0.99), baseline.quantile(0.99) if baseline else None)
             if p is not None]
    return max(found) if found else None


def judge(weight: int, serving_generation: int, serving: GenerationTraffic,
          candidate_generation: int, candidate: GenerationTraffic, config: CanaryConfig,
          baseline: GenerationTraffic | None = None) -> StepRecord:
    """The step's record: `pass`, `fail` (with reasons) or `wait` (too few requests yet)."""
    record = StepRecord(weight=weight, serving=figures(serving_generation, serving),
                        candidate=figures(candidate_generation, candidate), verdict="pass")
    reference = serving
    if serving.requests < MIN_REFERENCE_REQUESTS and baseline is not None:
        reference = baseline
    serving_rate = reference.errors / reference.requests if reference.requests else 0.0
    if candidate.requests < config.min_requests:
        allowed = (serving_rate + config.max_error_rate_delta) * config.min_requests
        if candidate.errors > allowed:  # it cannot pass at min_requests: stop it now
            record.verdict = "fail"
            record.reasons.append(
                f"{candidate.errors} errors in {candidate.requests} requests: past the "
                f"{allowed:.1f} that min_requests {config.min_requests} allows")
            return record
        record.verdict = "wait"
        record.reasons.append(f"{candidate.requests} of {config.min_requests} candidate "
                              "requests so far")
        return record
    candidate_rate = candidate.errors / candidate.requests
    if candidate_rate > serving_rate + config.max_error_rate_delta + 1e-12:
        record.reasons.append(
            f"error rate {candidate_rate:.4f} > serving {serving_rate:.4f} + "
            f"{config.max_error_rate_delta}")
    candidate_p99 = candidate.quantile(0.99)
    serving_p99 = _reference_p99(reference, baseline)
    if candidate_p99 is not None and serving_p99 is not None:
        too_slow = candidate_p99 > serving_p99 * config.max_p99_ratio
        if too_slow and candidate_p99 - serving_p99 > config.p99_slack_ms / 1000:
            record.reasons.append(
                f"p99 {candidate_p99 * 1000:.1f} ms > serving {serving_p99 * 1000:.1f} ms"
                f" x {config.max_p99_ratio}")
    if record.reasons:
        record.verdict = "fail"
    return record
