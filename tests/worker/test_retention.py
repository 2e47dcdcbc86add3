"""Review M14, retention: feedback rows (anyone may post them on a public model), deployment
events and finished tasks grew without bound, and process replicas' stdout.log was never
rotated. Now each worker's reconciler prunes the tables (real Postgres, a real worker
process) and cuts replica logs past their cap."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg

from schemas.settings import Settings
from tests.conftest import Proc, wait_task

EVENTS_KEPT, FEEDBACK_KEPT = 20, 10


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("retention never reached the expected counts")


async def _task(pool: asyncpg.Pool, model_id: UUID, kind: str, age_days: float,
                status: str = "done") -> UUID:
    task_id = uuid4()
    await pool.execute(
        """INSERT INTO tasks (id, kind, model_id, status, request_hash, created_at,
                              finished_at)
           VALUES ($1, $2, $3, $4, 'h', now() - make_interval(days => $5::int),
                   CASE WHEN $4 IN ('pending', 'processing') THEN NULL
                        ELSE now() - make_interval(days => $5::int) END)""",
        task_id, kind, model_id, status, int(age_days))
    return task_id


async def test_a_worker_prunes_old_tasks_and_events_and_surplus_feedback(
        spawn: Callable[..., Proc], pool: asyncpg.Pool, clean: None,
        hashing_model: Callable[..., Awaitable[UUID]]) -> None:
    model_id = await hashing_model("public-one")
    other = await hashing_model("other")
    old = [await _task(pool, model_id, "deploy", 40 + i) for i in range(3)]
    old_pending = await _task(pool, other, "deploy", 41, status="pending")
    newest_delete = await _task(pool, model_id, "delete", 45)  # old, but its kind's newest
    recent = await _task(pool, model_id, "deploy", 1)
    await pool.execute(
        """INSERT INTO deployment_events (model_id, level, message, created_at)
           SELECT $1, 'info', 'old ' || i, now() - interval '40 days'
           FROM generate_series(1, 5) i""", model_id)
    await pool.execute(
        """INSERT INTO deployment_events (model_id, level, message)
           SELECT $1, 'info', 'recent ' || i FROM generate_series(1, 30) i""", model_id)
    await pool.execute(
        """INSERT INTO feedback (model_id, event, payload)
           SELECT $1, 'upvote', jsonb_build_object('n', i) FROM generate_series(1, 30) i""",
        model_id)
    await pool.execute(
        """INSERT INTO feedback (model_id, event, payload)
           SELECT $1, 'upvote', '{}' FROM generate_series(1, 3) i""", other)

    spawn("worker", retention_interval_s=0.5, events_per_model=EVENTS_KEPT,
          feedback_per_model=FEEDBACK_KEPT)

    async def pruned() -> bool:
        return bool(await pool.fetchval(
            "SELECT count(*) FROM feedback WHERE model_id = $1", model_id) == FEEDBACK_KEPT)

    await _until(pruned)
    tasks_left = {r["id"] for r in await pool.fetch("SELECT id FROM tasks")}
    assert tasks_left.isdisjoint(old), "finished tasks past the retention are still there"
    assert {old_pending, newest_delete, recent} <= tasks_left
    events = [r["message"] for r in await pool.fetch(
        "SELECT message FROM deployment_events WHERE model_id = $1 ORDER BY id", model_id)]
    assert events == [f"recent {i}" for i in range(11, 31)], events
    kept = [r["n"] for r in await pool.fetch(
        "SELECT (payload->>'n')::int AS n FROM feedback WHERE model_id = $1 ORDER BY n",
        model_id)]
    assert kept == list(range(21, 31)), "the newest feedback is what stays"
    assert await pool.fetchval("SELECT count(*) FROM feedback WHERE model_id = $1", other) == 3


async def test_a_process_replicas_log_is_cut_past_its_cap(
        api: str, spawn: Callable[..., Proc], admin_headers: dict[str, str],
        settings: Settings, hashing_model: Callable[..., Awaitable[Any]]) -> None:
    cap = 64 * 1024
    await hashing_model("chatty")
    spawn("worker", replica_log_max_mb=cap / 2**20)
    async with aiohttp.ClientSession(headers=admin_headers) as http:
        async with http.post(f"{api}/deploy", json={"embedding_model_id": "alice/chatty"}) as r:
            assert r.status == 202, await r.text()
            task = await r.json()
        done = await wait_task(http, api, "deploy", task["task_id"])
    assert done["status"] == "done", done
    [log] = list((settings.state_dir / "replicas").glob("*/stdout.log"))
    with log.open("ab") as out:  # what a model printing without end would leave
        out.write(b"".join(b"line %d of a chatty model\n" % i for i in range(20_000)))
        out.write(b"the newest line\n")
    assert log.stat().st_size > 4 * cap

    async def capped() -> bool:
        return log.stat().st_size <= cap

    await _until(capped)
    text = log.read_bytes()
    assert text.rstrip().endswith(b"the newest line"), text[-200:]
    assert b"earlier output cut" in text
