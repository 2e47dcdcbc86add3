"""Issue 25, review M7 (process runtime and model server): a replica answers only requests
carrying its generation's secret, which the gateway sends and no answer or log shows, and a
process replica always runs under a memory limit."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
from pydantic import SecretStr

from model_server.config import Settings as ServerSettings
from schemas import replica_auth
from schemas.settings import Settings
from tests.conftest import TEST_SECRET_KEY, Proc, wait_task
from tests.model_server.conftest import hashing_settings, make_client, wait_until_healthy  # noqa: F401
from tests.support import services
from tests.support.accounts import call
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from worker.runtimes.base import ReplicaSpec
from worker.runtimes.container_spec import cpu_limit
from worker.runtimes.process import ProcessRuntime

EMBED = {"inputs": "a private model's answer"}


async def test_model_server_refuses_every_route_but_health_and_metrics_without_the_secret(
        make_client: Callable[..., Any]) -> None:  # noqa: F811
    client = await make_client(hashing_settings(gateway_secret="generation-secret"))
    await wait_until_healthy(client)  # /health stays open: the worker's check needs no secret
    for path, body in (("/embed", EMBED), ("/", EMBED), ("/embed_all", EMBED),
                       ("/tokenize", EMBED), ("/v1/embeddings", {"input": "x"})):
        for headers in ({}, {replica_auth.HEADER: "guessed"}):
            async with client.post(path, json=body, headers=headers) as resp:
                assert resp.status == 401, (path, headers, await resp.text())
                text = await resp.text()
                assert "generation-secret" not in text
    async with client.get("/info") as resp:
        assert resp.status == 401
    async with client.get("/metrics") as resp:  # open to a scraper: counts, no model data
        assert resp.status == 200 and "model_server_requests_total" in await resp.text()
    async with client.post("/embed", json=EMBED,
                           headers={replica_auth.HEADER: "generation-secret"}) as resp:
        assert resp.status == 200, await resp.text()


def test_generation_secrets_differ_per_generation_and_key() -> None:
    model = uuid4()
    first = replica_auth.generation_secret(TEST_SECRET_KEY, model, 1)
    assert first == replica_auth.generation_secret(TEST_SECRET_KEY, model, 1)
    assert first != replica_auth.generation_secret(TEST_SECRET_KEY, model, 2)
    assert first != replica_auth.generation_secret(TEST_SECRET_KEY, uuid4(), 1)
    assert first != replica_auth.generation_secret(TEST_SECRET_KEY + "x", model, 1)


async def test_replica_reached_directly_refuses_while_the_gateway_serves(
        api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        settings: Settings, pool: asyncpg.Pool, hashing_model: Any, tmp_path: Path) -> None:
    """Before: any local process (or another tenant's replica) that reached the replica's
    port had a private model's embeddings. After: 401 there; the gateway still serves."""
    model_id = await hashing_model("guarded")
    spawn("worker")
    status, task = await call(http, "POST", f"{api}/deploy",
                              json={"embedding_model_id": "alice/guarded"})
    assert status == 202, task
    done = await wait_task(http, api, "deploy", task["task_id"], 120)
    assert done["status"] == "done", done
    endpoint = await pool.fetchval(
        "SELECT endpoint FROM replicas WHERE model_id = $1 AND state = 'ready'", model_id)

    async with aiohttp.ClientSession() as direct:
        async with direct.post(f"{endpoint}/embed", json=EMBED) as resp:
            assert resp.status == 401, await resp.text()
        async with direct.get(f"{endpoint}/health") as resp:
            assert resp.status == 200
    async with http.post(f"{gateway}/serve/guarded/embed", json=EMBED) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(f"{gateway}/v1/embeddings",
                         json={"model": "alice/guarded", "input": "x"}) as resp:
        assert resp.status == 200, await resp.text()

    secret = replica_auth.generation_secret(TEST_SECRET_KEY, model_id, 1)
    (_pid, environ), = services.replica_processes(settings.state_dir).items()
    assert f"{replica_auth.ENV}={secret}".encode() in environ, "the replica holds its secret"
    for path in ("/api/v2/deployments/alice/guarded", "/api/v2/deploy/alice/guarded/status",
                 f"/deploy/{task['task_id']}"):
        status, body = await call(http, "GET", f"{api}{path}")
        assert status == 200 and secret not in json.dumps(body), path
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    replica_logs = "".join(p.read_text(errors="replace")
                           for p in (settings.state_dir / "replicas").rglob("*.log"))
    assert secret not in logs + replica_logs, "the secret reached a log"


async def test_process_replica_without_memory_setting_has_a_limit_without_cgroups(
        settings: Settings) -> None:
    """Before: with no cgroup (replica_cgroups false, or a host that allows none) and no
    `memory` in the deployment, the replica ran unbounded. After: RLIMIT_DATA at the default."""
    runtime = ProcessRuntime(settings.model_copy(update={"replica_cgroups": False,
                                                         "replica_memory_mb": 1536}))
    spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="test/hash",
                       generation=1, task_id=None, memory_mb=1536, memory_requested=False,
                       source={"backend": "hashing", "dimension": 16})
    started = await runtime.start(spec)
    try:
        meta = json.loads((settings.state_dir / "replicas" / started.runtime_ref / "meta.json")
                          .read_text())
        limits = Path(f"/proc/{meta['pid']}/limits").read_text()
        data = next(line for line in limits.splitlines() if line.startswith("Max data size"))
        assert data.split()[3] == str(1536 * 2**20), data
        assert meta["memory"] == {"kind": "rlimit-data", "limit_mb": 1536, "cgroup": None}
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()


def test_server_settings_keep_the_secret_out_of_their_repr() -> None:
    shown = ServerSettings(backend="hashing", gateway_secret=SecretStr("generation-secret"))
    assert "generation-secret" not in repr(shown) and "generation-secret" not in str(shown)


def test_cpu_limit_defaults_to_the_hosts_share_and_never_exceeds_the_engine() -> None:
    base = Settings(capacity_share=0.5)
    assert cpu_limit(None, base, 16) == 8.0
    assert cpu_limit(None, base, 1) == 1.0
    assert cpu_limit(None, base.model_copy(update={"replica_cpus": 2.5}), 16) == 2.5
    assert cpu_limit(0.5, base, 16) == 0.5
    assert cpu_limit(64.0, base, 16) == 16.0
