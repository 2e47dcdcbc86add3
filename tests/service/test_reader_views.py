"""Review L5: what a READ holder of a model saw that is its owner's. A model's
`source.location` (a host path: the store's folder, an administrator's path) and a failed
rollout's replica log lines (which can carry what the model printed, its secrets) are now
shown to its owners (the path) and writers (the log lines) only."""

from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg

from db import events
from schemas.log_tail import with_log_tail
from tests.support.accounts import call, make_user
from tests.support.archives import tiny_model_archive
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

SECRET_LINE = "MODEL_SECRET=hunter2"



async def test_a_reader_does_not_see_the_host_path_of_a_model(
        api: str, pool: asyncpg.Pool) -> None:
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    async with aiohttp.ClientSession() as http:
        status, model = await call(http, "POST", f"{api}/api/v2/models", headers=alice,
                                   json={"name": "pub", "access_level": "public"})
        assert status == 201, model
        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/pub/upload",
                                  headers=alice, data=tiny_model_archive())
        assert status == 200 and body["source"]["location"].startswith("/"), body
        path = body["source"]["location"]

        status, mine = await call(http, "GET", f"{api}/api/v2/models/alice/pub", headers=alice)
        assert mine["source"]["location"] == path
        status, seen = await call(http, "GET", f"{api}/api/v2/models/alice/pub", headers=bob)
        assert status == 200 and "location" not in seen["source"], seen
        assert seen["source"]["backend"] == "auto"
        status, listed = await call(http, "GET", f"{api}/api/v2/models", headers=bob)
        assert status == 200 and path not in str(listed), listed
        status, listed = await call(http, "GET", f"{api}/api/v2/models", headers=alice)
        assert path in str(listed)


async def test_a_reader_sees_a_failed_rollout_without_the_replicas_log_lines(
        api: str, pool: asyncpg.Pool, hashing_model: Any) -> None:
    """The failure is written as the worker writes it (`with_log_tail`, worker/rollout.py)."""
    model_id = await hashing_model("failing")  # alice's public model
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    reason = with_log_tail("replica exited with code 1 while starting",
                           f"loading...\n{SECRET_LINE}\nTraceback: boom")
    task_id = uuid4()
    await pool.execute(
        """INSERT INTO tasks (id, kind, model_id, status, request_hash, detail, finished_at,
                              request)
           VALUES ($1, 'deploy', $2, 'failed', 'h', $3, now(),
                   jsonb_build_object('embedding_model_id', $4::text))""",
        task_id, model_id, reason, str(model_id))
    await events.add(pool, model_id, "error", f"generation 1 failed: {reason}",
                     task_id=task_id, generation=1)
    async with aiohttp.ClientSession() as http:
        for who, sees in ((bob, False), (alice, True)):
            for url in (f"{api}/deploy/{task_id}", f"{api}/deploy-status/alice/failing",
                        f"{api}/api/v2/tasks/{task_id}",
                        f"{api}/api/v2/deploy/alice/failing/status"):
                status, body = await call(http, "GET", url, headers=who)
                assert status == 200, (url, body)
                assert (SECRET_LINE in str(body)) is sees, (url, body)
                assert "replica exited with code 1" in str(body), (url, body)
