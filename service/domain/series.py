"""A deployment's series over time (issue 31), read from `deployment_series` (written by the
workers' series loops, worker/series.py) and its events.

A window is `30s`..`24h` (`s`, `m`, `h`, or plain seconds); a window longer than 360
buckets is drawn in steps of several buckets (at most 360 points a generation), its rates
averaged, its latency histograms merged (so p50 and p99 stay exact over the step), its
replica counts the step's last and its in-flight count the step's most.
"""

import math
import re
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from db import events, series
from schemas.errors import Invalid
from schemas.gateway import Latency
from schemas.series import GenerationSeries, SeriesMarker, SeriesPoint, SeriesResponse

MAX_WINDOW_S = 24 * 3600
MIN_WINDOW_S = 30
MAX_POINTS = 360
# Generations drawn in one window at most (the newest); a window with more rollouts than
# this shows the newest ones' rows.
MAX_GENERATIONS = 20
MAX_MARKERS = 500
_WINDOW = re.compile(r"(\d{1,6})([smh]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_window(text: str | None) -> int:
    """`1h` → 3600; a window outside 30 s to 24 h is read as the nearer bound (the answer's
    `window_s` says which); 422 for anything that is not a duration."""
    if text is None:
        return 3600
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise Invalid("invalid request: window must be a duration such as 90s, 15m, 1h or 24h")
    return min(max(int(match[1]) * _UNIT_S[match[2]], MIN_WINDOW_S), MAX_WINDOW_S)


def step_for(window_s: int, bucket_s: float) -> int:
    """Seconds per point: the bucket, or the smallest multiple of it that keeps a window at
    MAX_POINTS points or fewer."""
    bucket = max(1, int(bucket_s))
    return bucket * max(1, math.ceil(window_s / bucket / MAX_POINTS))


def _ms(latency: Latency, q: float) -> float | None:
    seconds = latency.quantile(q)
    return None if seconds is None else round(seconds * 1000.0, 3)


def _points(rows: list[series.Bucket], step_s: int) -> list[SeriesPoint]:
    """One generation's rows (oldest first) as points of `step_s` seconds."""
    groups: dict[int, list[series.Bucket]] = {}
    for row in rows:
        start = int(row.bucket.timestamp()) // step_s * step_s
        groups.setdefault(start, []).append(row)
    points = []
    for start, group in sorted(groups.items()):
        latency = Latency()
        for row in group:
            if row.latency_buckets:
                latency = latency + Latency(count=sum(row.latency_buckets),
                                            buckets=row.latency_buckets)
        last = group[-1]
        points.append(SeriesPoint(
            at=datetime.fromtimestamp(start, UTC),
            requests_per_s=round(sum(r.requests_per_s for r in group) / len(group), 3),
            errors_per_s=round(sum(r.errors_per_s for r in group) / len(group), 3),
            p50_ms=_ms(latency, 0.5), p99_ms=_ms(latency, 0.99),
            replicas=last.replicas, desired=last.desired,
            inflight=max(r.inflight for r in group)))
    return points


async def read(pool: asyncpg.Pool, model_id: UUID, window_s: int,
               bucket_s: float) -> SeriesResponse:
    """The model's series over the last `window_s` seconds, and its events as markers."""
    end = datetime.now(UTC)
    start = end - timedelta(seconds=window_s)
    step_s = step_for(window_s, bucket_s)
    limit = (math.ceil(window_s / max(1.0, bucket_s)) + 1) * MAX_GENERATIONS
    rows = await series.read(pool, model_id, start, limit)
    by_generation: dict[int, list[series.Bucket]] = {}
    for row in rows:
        by_generation.setdefault(row.generation, []).append(row)
    newest = sorted(by_generation)[-MAX_GENERATIONS:]
    found = await events.list_since(pool, model_id, start, MAX_MARKERS)
    return SeriesResponse(
        model_id=str(model_id), window_s=window_s, step_s=step_s, start=start, end=end,
        generations=[GenerationSeries(generation=g, points=_points(by_generation[g], step_s))
                     for g in newest],
        events=[SeriesMarker(at=e.created_at, level=e.level, message=e.message,
                             kind=getattr(e, "kind", None),
                             generation=e.generation,
                             task_id=None if e.task_id is None else str(e.task_id))
                for e in found])
