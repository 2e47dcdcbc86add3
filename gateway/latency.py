"""Latency per deployment as the gateway reports it: counters of finished requests, their
summed time and a fixed-bucket histogram (schemas/gateway.py `Latency`), per model."""

from bisect import bisect_left
from uuid import UUID

from schemas.gateway import LATENCY_BOUNDS_S, Latency


class LatencyTally:
    """Counts since this gateway process started; cheap enough for every request."""

    def __init__(self) -> None:
        self._counts: dict[UUID, list[int]] = {}
        self._sums: dict[UUID, float] = {}

    def observe(self, model_id: UUID, seconds: float) -> None:
        """Count one finished request of `model_id` (or of a replica: any UUID key)."""
        buckets = self._counts.get(model_id)
        if buckets is None:
            buckets = self._counts[model_id] = [0] * (len(LATENCY_BOUNDS_S) + 1)
            self._sums[model_id] = 0.0
        buckets[bisect_left(LATENCY_BOUNDS_S, seconds)] += 1
        self._sums[model_id] += seconds

    def forget(self, keys: set[UUID]) -> None:
        for key in keys:
            self._counts.pop(key, None)
            self._sums.pop(key, None)

    def report(self) -> dict[str, Latency]:
        """model id (or replica id) → its counters, for the GatewayReport."""
        return {str(model_id): Latency(count=sum(buckets), sum_s=self._sums[model_id],
                                       buckets=list(buckets))
                for model_id, buckets in self._counts.items()}
