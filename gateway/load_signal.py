"""When a gateway should report at once: a model's in-flight count jumped since its last report.

The report is written about every second anyway (`routing.HEARTBEAT_S`). A load step
should not wait for that: once a model's requests in flight reach both `JUMP_RATIO` times
and `JUMP_MIN` more than the gateway last reported for it, the next report goes out at
once and is announced on `LOAD_CHANNEL`, which wakes the autoscalers. The rule is
relative, so a rising load triggers a few reports (in flight 4, 8, 16, ...), never one
per request; and reports are at least `MIN_GAP_S` apart, so a burst costs Redis at most
1 / MIN_GAP_S writes a second per gateway process. A jump's report is followed by one more,
MIN_GAP_S later and announced too: the autoscaler panics on two samples in a row, and
the second need not wait for the load to double again.
"""

from collections import Counter
from uuid import UUID

JUMP_RATIO = 2.0
JUMP_MIN = 4
MIN_GAP_S = 0.05


def is_jump(now: int, last: int) -> bool:
    """Whether `now` requests in flight are a jump from the `last` reported."""
    return now >= last + JUMP_MIN and now >= JUMP_RATIO * last


class LoadJumps:
    """Requests in flight by model, and what the last report said about each."""

    def __init__(self) -> None:
        self.inflight: Counter[UUID] = Counter()
        self._reported: dict[UUID, int] = {}
        self.jumped = False
        self._follow_up = False

    def started(self, model_id: UUID) -> bool:
        """Count one more request in flight; True when this one makes a jump."""
        self.inflight[model_id] += 1
        now = self.inflight[model_id]
        last = self._reported.get(model_id, 0)
        if not self.jumped and is_jump(now, last):
            self.jumped = True
            return True
        return False

    def finished(self, model_id: UUID) -> None:
        self.inflight[model_id] -= 1
        if self.inflight[model_id] <= 0:
            del self.inflight[model_id]

    def reported(self) -> bool:
        """A report is being written now: remember its counts; True if it follows a jump."""
        self._reported = dict(self.inflight)
        jumped, self.jumped = self.jumped, False
        if jumped:
            self._follow_up = not self._follow_up
            self.jumped = self._follow_up  # a jump's first report asks for one more
        return jumped
