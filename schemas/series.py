"""GET /api/v2/deployments/{model}/series (issue 31): a deployment's traffic, latency and
replicas over time, per generation, and its events as markers."""

from datetime import datetime

from pydantic import BaseModel, Field


class SeriesPoint(BaseModel):
    """One step of one generation: rates are means over the step, latency is over every
    request the gateways finished in it, replica counts are the step's last reading."""

    at: datetime = Field(description="start of the step")
    requests_per_s: float
    errors_per_s: float = Field(description="failed answers per second (a 5xx from the "
                                            "replica, or the gateway's own 502/504)")
    p50_ms: float | None = Field(default=None, description="None: no request finished")
    p99_ms: float | None = None
    replicas: int = Field(description="ready replicas of this generation")
    desired: int = Field(description="replicas this generation should have")
    inflight: int = Field(description="requests in flight at the step's end (the most, "
                                      "over a step of several buckets)")


class GenerationSeries(BaseModel):
    generation: int
    points: list[SeriesPoint]


class SeriesMarker(BaseModel):
    """A deployment event: a rollout step, an autoscaler decision, a crash, a rollback..."""

    at: datetime
    level: str
    # The event's kind where its writer records one (rollout step, autoscaler, crash...);
    # None: an event without one. Any kind is drawn as a marker with its text.
    kind: str | None = None
    message: str
    generation: int | None = None
    task_id: str | None = None


class SeriesResponse(BaseModel):
    model_id: str
    window_s: int = Field(description="the window asked for, in seconds (at most 24 h)")
    step_s: int = Field(description="seconds per point: the 10 s bucket, or a multiple of "
                                    "it so a window has at most 360 points")
    start: datetime
    end: datetime
    generations: list[GenerationSeries]
    events: list[SeriesMarker]
