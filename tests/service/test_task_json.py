"""The polling hot path's task JSON (orjson) is the API's documented TaskResponse, byte for
byte, for every shape a task takes."""

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from asyncpg.pgproto import pgproto

from db.tasks import Task
from service.domain.task_requests import response_json, to_response


def _task(**fields: Any) -> Task:
    now = datetime(2026, 12, 1, 11, 0, 0, 123456, tzinfo=UTC)
    base: dict[str, Any] = dict(
        # asyncpg's own UUID type, as rows carry it
        id=pgproto.UUID(str(uuid4())), kind="deploy", model_id=pgproto.UUID(str(uuid4())),
        status="pending", phase=None,
        request={"embedding_model_id": "alice/m"}, request_hash="x", metadata={},
        detail=None, attempts=0, idempotency_key=None, enqueued_at=None, lease_until=None,
        worker_id=None, created_by=None, started_at=None, created_at=now, updated_at=now,
        finished_at=None)
    return Task(**(base | fields))


@pytest.mark.parametrize("fields", [
    {},
    {"status": "processing", "phase": "health_checking",
     "updated_at": datetime(2026, 12, 1, 11, 0, 5, tzinfo=UTC)},  # no microseconds
    {"status": "failed", "detail": 'replica exited: "OOM" \u00e9\n\ttail',
     "metadata": {"generation": 3, "ignored_config_keys": ["x"], "ratio": 0.25,
                  "nested": {"a": [1, None, True]}}},
    {"kind": "delete", "request": {}, "status": "done"},  # no model id in the request
])
def test_response_json_is_the_pydantic_response_byte_for_byte(fields: dict[str, Any]) -> None:
    task = _task(**fields)
    assert response_json(task) == to_response(task).model_dump_json().encode()
