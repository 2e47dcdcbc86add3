"""Review L5: a deployment's `env` values were stored in plain text in `tasks.request` and
`deployments.config` (only `genai_key` was encrypted). Now the API seals each value with
the secrets' Fernet key at accept; the worker opens them when it builds the replica's
environment, and no answer echoes them."""

from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from schemas.settings import Settings
from tests.conftest import Proc, wait_task
from tests.support.accounts import replica_environs

VALUE = "plain-value-of-a-token-123"


async def test_env_values_are_sealed_at_rest_and_reach_the_replica(
        api: str, spawn: Callable[..., Proc], admin_headers: dict[str, str],
        pool: asyncpg.Pool, settings: Settings, hashing_model: Any) -> None:
    model_id = await hashing_model("with-env")
    spawn("worker")
    async with aiohttp.ClientSession(headers=admin_headers) as http:
        async with http.post(f"{api}/deploy", json={
                "embedding_model_id": "alice/with-env",
                "config": {"env": {"MY_API_TOKEN": VALUE}}}) as resp:
            assert resp.status == 202, await resp.text()
            accepted = await resp.text()
            task_id = (await resp.json())["task_id"]
        done = await wait_task(http, api, "deploy", task_id)
        assert done["status"] == "done", done
        async with http.get(f"{api}/api/v2/tasks/{task_id}") as resp:
            detail = await resp.text()
        async with http.get(f"{api}/api/v2/deployments/alice/with-env") as resp:
            shown = await resp.text()
    assert VALUE not in accepted + str(done) + detail + shown, "an answer echoed the value"
    assert "MY_API_TOKEN" in shown  # the console still lists the names
    request = await pool.fetchval("SELECT request::text FROM tasks WHERE id = $1::uuid",
                                  task_id)
    config = await pool.fetchval("SELECT config::text FROM deployments WHERE model_id = $1",
                                 model_id)
    assert "MY_API_TOKEN" in request and VALUE not in request, request
    assert "MY_API_TOKEN" in config and VALUE not in config, config
    environs = replica_environs(settings.state_dir)
    assert environs and all(env.get("MY_API_TOKEN") == VALUE for env in environs)
