"""Python client of the Greenroom API: `Client` (sync) and `AsyncClient`, typed with the
server's own pydantic schemas, retrying 429 and 503 answers as their Retry-After says."""

from greenroom_client.client import AsyncClient, Client
from greenroom_client.errors import ApiError, GreenroomError, TaskFailed, Unreachable

__all__ = ["ApiError", "AsyncClient", "Client", "GreenroomError", "TaskFailed", "Unreachable"]
