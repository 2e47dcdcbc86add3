"""Review M4: a task that its worker keeps handing back (its job ran past arq's timeout, or
the worker stopped) fails after `max_attempts` runs instead of going back to pending for
ever. Before, `db/tasks.py` `hand_back` ignored `attempts` and the job timeout (330 s)
was below the deadline a task may ask for (3600 s)."""

import asyncio
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from pydantic import ValidationError

from db import replicas, tasks
from schemas.rollout import MAX_TRAFFIC_PHASE_S, RolloutConfig, traffic_phase_s
from schemas.settings import Settings
from schemas.tasks import MAX_DEPLOY_TIMEOUT_S
from tests.conftest import Proc
from worker.jobs import task_job_timeout_s

ATTEMPTS = 2


async def test_a_task_handed_back_at_each_job_timeout_fails_after_max_attempts(
        api: str, spawn: Callable[..., Proc], admin_headers: dict[str, str],
        pool: asyncpg.Pool, hashing_model: Any) -> None:
    # The replica never becomes healthy before the job's 2 s are up; the task's own
    # deadline (600 s) is far away, so only the job timeout ends each run.
    model_id = await hashing_model("slow", startup_delay_s=100_000)
    async with aiohttp.ClientSession(headers=admin_headers) as http, http.post(
            api + "/deploy", json={"embedding_model_id": "alice/slow",
                                   "config": {"deploy_timeout_s": 600}}) as resp:
        assert resp.status == 202, await resp.text()
        task_id = UUID((await resp.json())["task_id"])
    spawn("worker", job_timeout_s=2, max_attempts=ATTEMPTS)
    deadline = time.monotonic() + 60
    seen_pending_again = False
    while time.monotonic() < deadline:
        task = await tasks.get(pool, task_id)
        assert task is not None
        seen_pending_again |= task.status == "pending" and task.attempts >= 1
        if task.status not in ("pending", "processing"):
            break
        await asyncio.sleep(0.1)
    assert task.status == "failed", f"still {task.status} after {task.attempts} attempts"
    assert task.attempts == ATTEMPTS
    assert seen_pending_again  # the first hand-back retried it, the last one gave up
    assert task.detail is not None
    assert "job timeout of 2 s" in task.detail and f"after {ATTEMPTS} attempts" in task.detail
    await asyncio.sleep(1.0)  # no further claim comes
    again = await tasks.get(pool, task_id)
    assert again is not None and again.status == "failed" and again.attempts == ATTEMPTS
    assert not await replicas.list_for_model(pool, model_id)  # each run removed its replica


def test_the_default_job_timeout_covers_the_longest_deadline_a_task_may_ask(
        settings: Settings) -> None:
    timeout = task_job_timeout_s(settings.model_copy(update={"job_timeout_s": None}))
    assert timeout >= MAX_DEPLOY_TIMEOUT_S + settings.drain_timeout_s


def test_the_job_timeout_covers_preparing_and_the_longest_traffic_phase(
        settings: Settings) -> None:
    """Review 1: an `auto` model's preparing and a canary or shadow phase run in the same
    job as the deploy deadline; the longest of each a task may ask for fits the timeout."""
    base = settings.model_copy(update={"job_timeout_s": None})
    timeout = task_job_timeout_s(base)
    assert timeout >= (base.onnx_prepare_timeout_s + MAX_DEPLOY_TIMEOUT_S
                       + MAX_TRAFFIC_PHASE_S + base.drain_timeout_s)
    slower = base.model_copy(update={"onnx_prepare_timeout_s": base.onnx_prepare_timeout_s
                                     + 100})
    assert task_job_timeout_s(slower) == timeout + 100
    # The longest phases the schema accepts are within MAX_TRAFFIC_PHASE_S; one more is not.
    steps = [5, 25, 50, 100]
    canary = RolloutConfig.model_validate({"strategy": "canary", "canary": {
        "steps": steps, "step_s": MAX_TRAFFIC_PHASE_S / len(steps) / 10}})
    assert traffic_phase_s(canary) == MAX_TRAFFIC_PHASE_S
    shadow = RolloutConfig.model_validate({"strategy": "shadow",
                                           "shadow": {"duration_s": MAX_TRAFFIC_PHASE_S}})
    assert traffic_phase_s(shadow) == MAX_TRAFFIC_PHASE_S
    with pytest.raises(ValidationError, match="traffic phase"):
        RolloutConfig.model_validate({"strategy": "canary", "canary": {
            "steps": steps, "step_s": 1, "max_step_s": MAX_TRAFFIC_PHASE_S / 4 + 1}})
    with pytest.raises(ValidationError, match="traffic phase"):
        RolloutConfig.model_validate({"strategy": "shadow",
                                      "shadow": {"duration_s": MAX_TRAFFIC_PHASE_S + 1}})
    # Only the strategy that runs counts: a green rollout keeps its unused canary.
    assert traffic_phase_s(RolloutConfig.model_validate(
        {"canary": {"steps": steps, "step_s": 3600}})) == 0
