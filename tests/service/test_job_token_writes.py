"""Review L5: a job token (every replica holds one for its model) could append events and
metadata to its model without end. Now events it logs are capped per model per minute
(429) and the model's metadata may not grow past a bound through it (413)."""

from collections.abc import Callable
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg

from schemas.tokens import issue_job_token
from tests.conftest import START_TIMEOUT_S, TEST_SECRET_KEY, Proc, bearer
from tests.support.accounts import call
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

PER_MINUTE = 5


async def test_a_job_token_cannot_grow_its_models_events_or_metadata_without_end(
        spawn: Callable[..., Proc], pool: asyncpg.Pool, clean: None,
        hashing_model: Any) -> None:
    port = free_port("127.0.0.1")
    spawn("service", api_port=port, job_events_per_minute=PER_MINUTE, job_metadata_max_kb=2)
    api = f"http://127.0.0.1:{port}"
    model_id = await hashing_model("chatty")
    # A job token speaks while its generation has a live replica: this row stands for one.
    await pool.execute("INSERT INTO replicas (id, model_id, generation, runtime, state) "
                       "VALUES ($1, $2, 1, 'process', 'ready')", uuid4(), model_id)
    job = bearer(issue_job_token(TEST_SECRET_KEY, model_id, 1))
    async with aiohttp.ClientSession() as http:
        await wait_for_http(http, api + "/healthz", timeout_s=START_TIMEOUT_S)
        answers = []
        for i in range(PER_MINUTE + 3):
            status, body = await call(http, "POST", f"{api}/api/v2/deploy/log", headers=job,
                                      json={"level": "info", "message": f"line {i}"})
            answers.append(status)
        assert answers == [200] * PER_MINUTE + [429] * 3, answers
        assert "GREENROOM_JOB_EVENTS_PER_MINUTE" in body["message"], body
        stored = await pool.fetchval(
            "SELECT count(*) FROM deployment_events WHERE model_id = $1", model_id)
        assert stored == PER_MINUTE

        status, body = await call(http, "POST", f"{api}/api/v2/deploy/update-status",
                                  headers=job, json={"status": "complete",
                                                     "metadata": {"small": "x" * 100}})
        assert status == 200, body
        status, body = await call(http, "POST", f"{api}/api/v2/deploy/update-status",
                                  headers=job, json={"status": "complete",
                                                     "metadata": {"big": "x" * 4096}})
        assert status == 413 and "GREENROOM_JOB_METADATA_MAX_KB" in body["message"], body
    metadata = await pool.fetchval("SELECT metadata FROM models WHERE id = $1", model_id)
    assert "small" in metadata and "big" not in metadata
