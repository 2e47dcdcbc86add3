"""When a gateway should report at once: a model's in-flight count jumped since its last report.

The report is written about every second anyway (`HEARTBEAT_S`, both engines). A load step
should not wait for that: once a model's requests in flight reach both `JUMP_RATIO` times
and `JUMP_MIN` more than the gateway last reported for it, the next report goes out at
once, names the model in its `jumped` field, and is announced on `LOAD_CHANNEL`, which
wakes the autoscalers; the autoscaler may panic on that one sample (worker/scaling/kpa.py).
The rule is relative, so a rising load triggers a few reports (in flight 4, 8, 16, ...),
never one per request; and reports are at least `MIN_GAP_S` apart, so a burst costs Redis
at most 1 / MIN_GAP_S writes a second per gateway process.
"""

from collections import Counter
from uuid import UUID

# How often a gateway writes its report when nothing jumped (the Python gateway's
# gateway/routing.py and the HAProxy controller alike).
HEARTBEAT_S = 1.0
JUMP_RATIO = 2.0
JUMP_MIN = 4
MIN_GAP_S = 0.05


def is_jump(now: int, last: int) -> bool:
    """Whether `now` requests in flight are a jump from the `last` reported."""
    return now >= last + JUMP_MIN and now >= JUMP_RATIO * last


class LoadJumps:
    """Requests in flight by model, what the last report said about each, and which jumped."""

    def __init__(self) -> None:
        self.inflight: Counter[UUID] = Counter()
        self._reported: dict[UUID, int] = {}
        self.jumped: set[UUID] = set()  # models whose count jumped since the last report
        self.wake = False  # announce the next report even without a jump (a held request)

    def started(self, model_id: UUID) -> bool:
        """Count one more request in flight; True when it makes the model's first jump since
        the last report."""
        self.inflight[model_id] += 1
        if model_id in self.jumped:
            return False
        if is_jump(self.inflight[model_id], self._reported.get(model_id, 0)):
            self.jumped.add(model_id)
            return True
        return False

    def finished(self, model_id: UUID) -> None:
        self.inflight[model_id] -= 1
        if self.inflight[model_id] <= 0:
            del self.inflight[model_id]

    def reported(self) -> tuple[list[str], bool]:
        """A report is being written now: remember its counts; (the models that jumped, for
        the report; whether to announce it)."""
        self._reported = dict(self.inflight)
        jumped, announce = sorted(str(m) for m in self.jumped), bool(self.jumped) or self.wake
        self.jumped, self.wake = set(), False
        return jumped, announce
