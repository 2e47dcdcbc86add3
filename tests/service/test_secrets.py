"""genai_key: encrypted at rest, in the replica's environment, in no response or log line."""

from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg

from db import deployments
from schemas.settings import Settings
from tests.conftest import Proc, wait_task
from tests.support.accounts import call, make_user, replica_environs
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)


def _log_files(tmp_path: Path) -> list[Path]:
    """Every file a process of this test wrote: API and worker logs, replica stdout/stderr."""
    return [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000
            and "postgres" not in p.parts]


async def test_genai_key_reaches_the_replica_and_nothing_else(
        api: str, spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings, hashing_model: Any, tmp_path: Path) -> None:
    secret = f"sk-genai-{uuid4().hex}"
    _, alice = await make_user(pool, "alice")
    model_id = str(await hashing_model("secretive"))
    spawn("worker")
    seen: list[str] = []

    async def get(method: str, path: str, **kw: Any) -> Any:
        async with anon_http.request(method, api + path, headers=alice, **kw) as resp:
            text = await resp.text()
        seen.append(text)
        return resp.status, text

    status, _ = await get("POST", "/api/v1/deploy/run", json={
        "model_identifier": "alice/secretive", "genai_key": secret})
    assert status == 202
    _, task = await call(anon_http, "GET", f"{api}/deploy-status/{model_id}", headers=alice)
    async with aiohttp.ClientSession(headers=alice) as http:
        done = await wait_task(http, api, "deploy", task["task_id"], 60)
    assert done["status"] == "done", done
    seen.append(str(done))

    envs = replica_environs(settings.state_dir)
    assert [e.get("GENAI_KEY") for e in envs] == [secret], "the replica got the key as env"
    assert all(e.get("GREENROOM_JOB_TOKEN") for e in envs)

    for path in (f"/deploy/{task['task_id']}", f"/deploy-status/{model_id}",
                 f"/api/v2/deploy/{model_id}/status", f"/api/v2/deploy/{model_id}/logs",
                 f"/api/v2/models/{model_id}", "/api/v2/models",
                 f"/api/v1/deploy/status?model_identifier={model_id}",
                 f"/api/v1/deploy/logs?model_identifier={model_id}",
                 f"/api/v1/deploy/permissions/{model_id}"):
        status, _ = await get("GET", path)
        assert status == 200, path
    assert not [text for text in seen if secret in text], "a response carried the secret"

    stored = await deployments.get_secrets(pool, UUID(model_id))
    assert stored and secret.encode() not in stored, "encrypted at rest"
    rows = await pool.fetch("SELECT request::text AS r, metadata::text AS m FROM tasks")
    assert not [r for r in rows if secret in r["r"] or secret in r["m"]]

    files = _log_files(tmp_path)
    assert any(f.name.startswith("worker") for f in files)
    assert any(f.name.startswith("service") for f in files)
    assert any("replicas" in f.parts for f in files), "replica stdout/stderr are checked too"
    leaked = [str(f) for f in files if secret.encode() in f.read_bytes()]
    assert not leaked, f"the secret is in {leaked}"
