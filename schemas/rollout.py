"""`config.rollout`: how a deploy judges its new generation before traffic moves to it.

The compatibility gate (worker/compatibility.py) has the serving and the new generation
embed a probe set and compares their vectors. `same-space`, the default, keeps the old
generation serving when the new vectors are not interchangeable with the old ones;
`new-space` flips anyway and says that every index built from the old vectors must be
embedded again.

Then how the new generation takes the traffic, and what a canary records of each step
it judged (`metadata.rollout.steps`). `strategy`: `green` (the default: all traffic moves
at once when the new generation is healthy), `canary` (the new generation takes `steps`
percent of requests in turn, each for `step_s` and at least `min_requests`, judged
against the serving generation by worker/canary.py) or `shadow` (`percent` of requests
are also sent to the new generation for `duration_s`, its answers compared and
discarded, then the green switch). After the flip the previous generation stays warm
for `keep_previous_s`, so that a rollback inside that window is a route flip (issue 26).
"""

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

# The same-space floors, fixed by issue 26 (clients and scripts count on them).
MIN_MEAN_COSINE = 0.99
MIN_NEIGHBOUR_OVERLAP = 0.9
NEIGHBOURS = 10
# A deploy's own probe set: enough sentences for ten neighbours each to mean something,
# and bounded so a body stays small (each is embedded twice, by both generations).
MIN_PROBE_SENTENCES = 20
MAX_PROBE_SENTENCES = 500
MAX_PROBE_CHARS = 500

Compatibility = Literal["same-space", "new-space"]
ProbeSentence = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROBE_CHARS,
                                                 pattern=r"\S")]
MAX_STEPS = 20
# The longest traffic phase a deploy may ask for (a canary's step deadlines summed, or a
# shadow's duration): the worker's job timeout (worker/jobs.py task_job_timeout_s) covers
# it, so a phase within its bound is never cut short by arq and retried (review 1).
MAX_TRAFFIC_PHASE_S = 7200.0


class CanaryConfig(BaseModel):
    """A canary's steps and the bounds its candidate must keep at each one."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field(
        default_factory=lambda: [5, 25, 50, 100], min_length=1, max_length=MAX_STEPS,
        description="percent of requests the candidate takes, step by step (rising, 1-100);"
                    " after the last it takes all")
    step_s: float = Field(default=30.0, ge=1, le=3600,
                          description="seconds each step lasts at least")
    min_requests: int = Field(default=100, ge=1, le=1_000_000,
                              description="candidate requests a step is judged on, at least")
    max_error_rate_delta: float = Field(
        default=0.01, ge=0, le=1,
        description="the candidate's error rate may exceed the serving one's by this much")
    max_p99_ratio: float = Field(
        default=1.5, ge=1, le=100,
        description="the candidate's p99 may be this many times the serving one's")
    p99_slack_ms: float = Field(
        default=1.0, ge=0, le=60_000,
        description="a p99 within this many ms of the serving one's passes whatever the"
                    " ratio (sub-millisecond answers vary more than they matter)")
    max_step_s: float | None = Field(
        default=None, gt=0, le=86_400,
        description="a step without min_requests by then fails (default: 10 x step_s)")

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= s <= 100 for s in steps):
            raise ValueError("every step is a percent from 1 to 100")
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError("steps must rise")
        return steps

    @property
    def step_deadline_s(self) -> float:
        return self.max_step_s or 10 * self.step_s


class ShadowConfig(BaseModel):
    """A shadow: a share of requests mirrored to the candidate, whose answers are only
    compared (cosine with the serving answer) and counted."""

    model_config = ConfigDict(extra="forbid")

    percent: float = Field(default=10.0, gt=0, le=100,
                           description="percent of requests also sent to the candidate")
    duration_s: float = Field(default=60.0, ge=1, le=86_400,
                              description="seconds of mirroring before the green switch")


class RolloutConfig(BaseModel):
    """`config.rollout`: how a redeploy judges its new generation and hands it the
    traffic; every field optional."""

    model_config = ConfigDict(extra="forbid")

    compatibility: Compatibility = Field(
        default="same-space",
        description="same-space: refuse the flip when the new generation's vectors differ "
                    f"from the serving one's (dimension, mean cosine < {MIN_MEAN_COSINE}, "
                    f"top-{NEIGHBOURS} neighbour overlap < {MIN_NEIGHBOUR_OVERLAP}); "
                    "new-space: flip, recording that the vectors are not comparable")
    probe: list[ProbeSentence] | None = Field(
        default=None, min_length=MIN_PROBE_SENTENCES, max_length=MAX_PROBE_SENTENCES,
        description="sentences both generations embed (default: the bundled probe set)")
    strategy: Literal["green", "canary", "shadow"] = Field(
        default="green",
        description="how the new generation takes the traffic: green (all at once), canary "
                    "(`canary.steps`, judged against the serving one) or shadow (mirrored, "
                    "then green); with `autoscaling_enabled`, each generation is autoscaled "
                    "on its own share during a canary or shadow, the quota counting both")
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    keep_previous_s: float | None = Field(
        default=None, ge=0, le=86_400,
        description="after a flip, the previous generation's replicas stay warm (running, "
                    "not routed) this long: a rollback inside it is a route flip; they count "
                    "toward quotas and capacity meanwhile; 0 drains them at once (default: "
                    "GREENROOM_ROLLOUT_KEEP_PREVIOUS_S, 300)")

    @model_validator(mode="after")
    def _phase_bounded(self) -> "RolloutConfig":
        if traffic_phase_s(self) > MAX_TRAFFIC_PHASE_S:
            what = ("the canary's step deadlines (max_step_s, default 10 x step_s) sum to"
                    if self.strategy == "canary" else "shadow.duration_s is")
            raise ValueError(f"{what} {traffic_phase_s(self):g} s, past the "
                             f"{MAX_TRAFFIC_PHASE_S:g} s a traffic phase may last")
        return self


def traffic_phase_s(rollout: RolloutConfig) -> float:
    """The longest the traffic phase of `rollout` may last: every canary step to its
    deadline, or the shadow's duration; 0 for a green rollout."""
    if rollout.strategy == "canary":
        return len(rollout.canary.steps) * rollout.canary.step_deadline_s
    if rollout.strategy == "shadow":
        return rollout.shadow.duration_s
    return 0.0


def keep_previous_s(rollout: RolloutConfig | None, default: float) -> float:
    """The warm window of a deploy with `rollout`; `default`: the installation's setting."""
    if rollout is None or rollout.keep_previous_s is None:
        return default
    return rollout.keep_previous_s


class RollbackRequest(BaseModel):
    """POST /api/v2/deploy/{model}/rollback; the body is optional."""

    model_config = ConfigDict(extra="forbid")

    generation: int | None = Field(
        default=None, ge=1, le=2**31 - 1,
        description="the generation to go back to; default: the one that served before "
                    "the serving one")


class GenerationFigures(BaseModel):
    """One generation's traffic in one canary step."""

    generation: int
    requests: int
    errors: int
    error_rate: float | None  # None: no requests
    p50_ms: float | None  # None: no latency histogram or no requests
    p99_ms: float | None


class StepRecord(BaseModel):
    """One judged canary step, as `metadata.rollout.steps` lists it."""

    weight: int  # percent of requests the candidate took
    serving: GenerationFigures
    candidate: GenerationFigures
    verdict: Literal["pass", "fail", "wait"]  # wait: too few requests yet
    reasons: list[str] = Field(default_factory=list)  # why it failed (or waits)
    elapsed_s: float | None = None
