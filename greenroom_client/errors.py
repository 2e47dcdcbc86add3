"""The client's one root exception and its kinds."""

from typing import Any


class GreenroomError(Exception):
    """Anything the client reports: the API said no, or could not be reached."""


class Unreachable(GreenroomError):
    """No HTTP answer from the API (refused, timed out, DNS)."""


class ApiError(GreenroomError):
    """The API answered with an error body `{"status_code", "message", "detail"}`."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.detail = detail


class TaskFailed(GreenroomError):
    """A waited-for task ended failed, canceled or refused."""

    def __init__(self, task: Any) -> None:
        super().__init__(f"task {task.task_id} {task.status}: {task.detail}")
        self.task = task
