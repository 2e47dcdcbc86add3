"""Per-generation traffic in the gateway: the weighted split, the shadow's comparison and
the counters the canary judge reads (schemas/gateway.py `GenerationTraffic`).

During a canary a deployment's route carries a candidate generation with a weight (the
percent of requests it takes; the serving generation takes the rest); during a shadow,
a percent of requests is also sent to the candidate and its answer is compared with the
serving one (cosine of the vectors) and discarded. Every request is counted under the
generation that answered it: requests, errors (5xx and requests no replica took) and a
latency histogram, for every deployment (the cost is a dict look-up and a bisect).
"""

import json
import math
import random
from bisect import bisect_left
from typing import Any
from uuid import UUID

from db.deployments import Route
from schemas.gateway import TRAFFIC_BOUNDS_S, GenerationTraffic, Latency

# Shadow requests in flight at once per gateway process, at most: past it a mirror is
# skipped (a shadow must never cost the serving traffic memory or sockets unbounded).
MAX_SHADOWS_INFLIGHT = 64
# Paths whose answers are vectors the shadow compares.
COMPARED_PATHS = frozenset({"/", "/embed", "/v1/embeddings"})
# Answers larger than this are not parsed for the comparison (only counted).
MAX_COMPARED_BYTES = 4 * 1024 * 1024


class Tally:
    """One generation's counters (mutable, cheap to bump)."""

    __slots__ = ("buckets", "compared", "cosine_sum", "errors", "requests", "sum_s")

    def __init__(self) -> None:
        self.requests = self.errors = self.compared = 0
        self.sum_s = self.cosine_sum = 0.0
        self.buckets = [0] * (len(TRAFFIC_BOUNDS_S) + 1)

    def observe(self, seconds: float, failed: bool) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
        self.time(seconds)

    def time(self, seconds: float) -> None:
        """Into the latency histogram only (the HAProxy engine counts requests and errors
        from HAProxy's counters, gateway/haproxy/traffic.py)."""
        self.buckets[bisect_left(TRAFFIC_BOUNDS_S, seconds)] += 1
        self.sum_s += seconds

    def report(self) -> GenerationTraffic:
        return GenerationTraffic(
            requests=self.requests, errors=self.errors,
            latency=Latency(count=sum(self.buckets), sum_s=self.sum_s, buckets=list(self.buckets)),
            compared=self.compared, cosine_sum=self.cosine_sum)


class TrafficTally:
    """Counters per (model, generation) since this gateway process started."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[UUID, int], Tally] = {}

    def get(self, model_id: UUID, generation: int) -> Tally:
        tally = self._tallies.get((model_id, generation))
        if tally is None:
            tally = self._tallies[(model_id, generation)] = Tally()
        return tally

    def keep(self, live: set[tuple[UUID, int]]) -> None:
        """Drop the counters of every generation not in `live` (serving or a candidate): a
        generation replaced no longer grows the report (review finding 8). The canary judge
        reads a vanished counter as a gateway that restarted (worker/canary.py `window`)."""
        for key in [key for key in self._tallies if key not in live]:
            del self._tallies[key]

    def report(self) -> dict[str, dict[str, GenerationTraffic]]:
        out: dict[str, dict[str, GenerationTraffic]] = {}
        for (model_id, generation), tally in self._tallies.items():
            out.setdefault(str(model_id), {})[str(generation)] = tally.report()
        return out


def split(route: Route, draw: float) -> tuple[int, list[tuple[UUID, str]]]:
    """The generation that takes this request and its replicas; `draw` in [0, 100). A
    generation without a ready replica gives its share to the other."""
    candidate = route.candidate
    if candidate is None or not candidate.replicas:
        return route.generation, route.replicas
    if (draw < candidate.split.weight or not route.replicas) and candidate.split.weight:
        return candidate.split.generation, candidate.replicas
    return route.generation, route.replicas


def mirrors(route: Route) -> bool:
    """Whether this request is also sent to the shadowed candidate."""
    candidate = route.candidate
    return (candidate is not None and bool(candidate.replicas)
            and candidate.split.shadow_percent > 0
            and random.random() * 100 < candidate.split.shadow_percent)


def _vectors(body: bytes) -> list[list[float]] | None:
    """The vectors of an /embed (a list of lists) or /v1/embeddings answer; None otherwise."""
    if len(body) > MAX_COMPARED_BYTES:
        return None
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        items = data.get("data")
        if not isinstance(items, list):
            return None
        data = [item.get("embedding") if isinstance(item, dict) else None for item in items]
    if not isinstance(data, list) or not all(isinstance(v, list) for v in data):
        return None
    return data


def cosines(serving: bytes, candidate: bytes) -> list[float] | None:
    """Cosine of each input's vector in the two answers; None when they cannot be compared
    (not vectors, a different count or dimension)."""
    a, b = _vectors(serving), _vectors(candidate)
    if a is None or b is None or len(a) != len(b):
        return None
    out = []
    for u, v in zip(a, b, strict=True):
        if len(u) != len(v):
            return None
        try:
            dot = math.fsum(x * y for x, y in zip(u, v, strict=True))
            norm = math.sqrt(math.fsum(x * x for x in u) * math.fsum(y * y for y in v))
        except TypeError:
            return None
        out.append(dot / norm if norm else 0.0)
    return out
