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

from db import replicas, tasks
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
