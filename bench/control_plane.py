"""Control-plane benchmark: POST /deploy throughput and GET /deploy/{id} latency.

Each figure is printed next to its limit measured in the same run on the same pools:
the same INSERT + enqueue (and the same SELECT) done in-process with no HTTP in between.
The API runs in this process (so the pools are shared), the client too; the ratio is
what the HTTP layer, validation and model lookup cost.

    .venv/bin/python bench/control_plane.py [--requests 2000] [--concurrency 32]
"""

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
from aiohttp import web
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db import quotas, tasks, users
from launch import backing
from schemas.models import ModelSource
from schemas.settings import Settings
from schemas.tokens import issue_user_token
from service.app import create_app
from service.domain import tasks as task_service
from service.domain.registration import register
from service.keys import PG, REDIS
from worker.runtimes.process import free_port

MODELS = 100


async def _run(n: int, concurrency: int, op: Callable[[int], Awaitable[Any]]) -> list[float]:
    """Run op(0..n-1) with `concurrency` in flight; returns each call's latency (s)."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            start = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


async def _raw_insert(app: web.Application, model_ids: list[UUID], i: int) -> None:
    """The limit: what POST /deploy does to Postgres and Redis, with no HTTP."""
    task = await tasks.insert(
        app[PG], task_id=uuid4(), kind="deploy", model_id=model_ids[i % MODELS],
        request={"embedding_model_id": str(model_ids[i % MODELS])}, request_hash="x",
        idempotency_key=None, created_by=None, metadata={},
    )
    await task_service.enqueue(app[REDIS], app[PG], task.id)


async def _bench(args: argparse.Namespace, settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    model_ids = [(await register(app[PG], "bench", f"m{i}", ModelSource(backend="hashing"),
                                 "public")).id for i in range(MODELS)]
    owner = await users.ensure(app[PG], "bench")
    # Every model gets deploys; the bench measures the API, not the default quotas.
    await quotas.set_overrides(app[PG], owner.id, {
        "max_deployments": MODELS, "max_replicas": MODELS, "max_memory_mb": MODELS * 1024})
    assert settings.secret_key is not None
    token = issue_user_token(settings.secret_key.get_secret_value(), owner.id)
    await app[REDIS].flushdb()
    n, c = args.requests, args.concurrency
    connector = aiohttp.TCPConnector(limit=c)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base, connector=connector, headers=headers) as http:
        created: list[str] = []

        async def post(i: int) -> None:
            async with http.post("/deploy",
                                 json={"embedding_model_id": str(model_ids[i % MODELS])}) as r:
                assert r.status == 202, await r.text()
                created.append((await r.json())["task_id"])

        async def get(i: int) -> None:
            async with http.get(f"/deploy/{created[i % len(created)]}") as r:
                assert r.status == 200
                await r.read()

        await _run(200, c, post)  # warm-up: connections, prepared statements
        await _run(200, c, lambda i: _raw_insert(app, model_ids, i))
        t0 = time.perf_counter()
        await _run(n, c, lambda i: _raw_insert(app, model_ids, i))
        raw_rate = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        await _run(n, c, post)
        api_rate = n / (time.perf_counter() - t0)
        ids = [UUID(t) for t in created]
        raw_get = await _run(n, 8, lambda i: tasks.get(app[PG], ids[i % len(ids)], "deploy"))
        api_get = await _run(n, 8, get)
    await runner.cleanup()
    print(f"control plane, {n} requests, concurrency {c} (POST) / 8 (GET), one process")
    print(f"POST /deploy        {api_rate:8.0f} tasks/s   limit (INSERT+enqueue in-process) "
          f"{raw_rate:8.0f}/s   ratio {api_rate / raw_rate:.2f}")
    print(f"GET /deploy/{{id}}    p50 {_pct(api_get, 50):6.2f} ms  p99 {_pct(api_get, 99):6.2f} ms"
          f"   limit (SELECT in-process) p50 {_pct(raw_get, 50):6.2f} ms  p99 "
          f"{_pct(raw_get, 99):6.2f} ms   ratio p50 {_pct(raw_get, 50) / _pct(api_get, 50):.2f}"
          f"  p99 {_pct(raw_get, 99) / _pct(api_get, 99):.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    keep: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        admin = backing.postgres_admin_dsn(Path(tmp), keep)
        redis_url = backing.redis_url(Path(tmp), keep)
        dsn = await backing.create_database(admin, f"greenroom_bench_{os.getpid()}")
        try:
            await _bench(args, Settings(database_url=dsn, redis_url=redis_url,
                                        secret_key=SecretStr(secrets.token_urlsafe(32)),
                                        log_level="warning"))
        finally:
            await backing.drop_database(admin, dsn)


if __name__ == "__main__":
    from schemas.logs import configure_logging

    configure_logging("warning")
    asyncio.run(main())
