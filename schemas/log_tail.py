"""A failed rollout's reason carries the replica's last log lines, which can hold what the
model printed (its secrets, its inputs). Review L5: those lines are for the model's writers
and owners; a reader sees the reason without them."""

import dataclasses
from typing import Protocol, TypeVar

LOG_TAIL_MARK = "; last log lines:\n"
WITHHELD = " (the replica's last log lines are shown to those who may write to the model)"


def with_log_tail(reason: str, tail: str) -> str:
    return reason + (LOG_TAIL_MARK + tail if tail else "")


def without_log_tail(text: str | None) -> str | None:
    """`text` up to its log lines, saying they were withheld; unchanged if it has none."""
    if text is None or LOG_TAIL_MARK not in text:
        return text
    return text.split(LOG_TAIL_MARK, 1)[0] + WITHHELD


class _Detailed(Protocol):
    @property
    def detail(self) -> str | None: ...


class _Messaged(Protocol):
    @property
    def message(self) -> str: ...


D = TypeVar("D", bound=_Detailed)
M = TypeVar("M", bound=_Messaged)


def task_for_reader(task: D) -> D:
    """A task row (a frozen dataclass) with its detail's log lines withheld."""
    return dataclasses.replace(task, detail=without_log_tail(task.detail))  # type: ignore[type-var]


def event_for_reader(event: M) -> M:
    """An event row (a frozen dataclass) with its message's log lines withheld."""
    message = without_log_tail(event.message)
    assert message is not None
    return dataclasses.replace(event, message=message)  # type: ignore[type-var]
