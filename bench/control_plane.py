"""Control-plane benchmark: POST /deploy throughput and GET /deploy/{id} latency.

Each figure is printed next to its limit measured in the same run on the same pools:
the same statements done in-process with no HTTP in between: for POST the model, grant
and quota lookup, the INSERT and the enqueue (and, for comparison, the INSERT and enqueue
alone); for GET the same SELECT.
The API runs in this process (so the pools are shared, and it runs on uvloop as
`greenroom api` does); the ratio is what the HTTP layer, authentication and validation
cost (and, against the bare INSERT + enqueue, the lookup too).

The load comes from wrk (C, one thread), as in bench/model_server.py: on two shared cores
a Python client in the API's own event loop adds its own CPU to every request the API
answers. `--client python` drives the API with aiohttp's client in this process instead
(the way this bench measured before), to show that share. Beside each figure: the API
process's CPU per request (the limit's too), which the machine's load moves far less
than latency.

    .venv/bin/python bench/control_plane.py [--seconds 5] [--concurrency 32]
        [--client wrk|python] [--requests 2000]
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
from aiohttp import web
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db import owner_quotas, tasks, users
from edge.keys import PG
from launch import backing
from schemas.models import ModelSource
from schemas.settings import Settings
from schemas.tasks import TaskKind
from schemas.tokens import issue_user_token
from service.app import create_app
from service.domain import task_requests
from service.domain.registration import register
from service.keys import REDIS
from worker.runtimes.process import free_port

MODELS = 100
GET_CONCURRENCY = 8
# wrk's done() prints one JSON line; request() walks the lines of WRK_LINES (paths or bodies).
WRK_SCRIPT = """
local lines = {}
for line in io.lines(os.getenv("WRK_LINES")) do lines[#lines + 1] = line end
local i = 0
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN")
wrk.headers["Content-Type"] = "application/json"
local post = os.getenv("WRK_POST") == "1"
request = function()
  i = i % #lines + 1
  if post then return wrk.format("POST", "/deploy", nil, lines[i]) end
  return wrk.format("GET", lines[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Figures:
    """One measured phase: its rate, latencies (s) and this process's CPU per request."""

    rate: float
    latencies_ms: tuple[float, float]  # p50, p99
    cpu_ms: float


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def _run(n: int, concurrency: int, op: Callable[[int], Awaitable[Any]]) -> Figures:
    """Run op(0..n-1) with `concurrency` in flight, in this process."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            start = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - start)

    cpu, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu
    return Figures(n / elapsed, (_pct(latencies, 50), _pct(latencies, 99)), cpu / n * 1000)


async def _wrk(base: str, token: str, lines: list[str], post: bool, concurrency: int,
               seconds: float, folder: Path) -> Figures:
    """wrk against the API (served by this process's loop meanwhile); any error fails."""
    (folder / "lines").write_text("\n".join(lines) + "\n")
    (folder / "bench.lua").write_text(WRK_SCRIPT)
    env = os.environ | {"WRK_LINES": str(folder / "lines"), "WRK_TOKEN": token,
                        "WRK_POST": "1" if post else "0"}
    cpu = time.process_time()
    process = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s",
        "-s", str(folder / "bench.lua"), base, env=env, stdout=subprocess.PIPE)
    output = (await process.communicate())[0].decode()
    cpu = time.process_time() - cpu
    found = re.search(r"^\{.*\}$", output, re.MULTILINE)
    if process.returncode != 0 or found is None:
        raise SystemExit(f"wrk failed:\n{output}")
    stats = json.loads(found[0])
    if stats["errors"] or "Non-2xx" in output:
        raise SystemExit(f"wrk saw failed requests:\n{output}")
    return Figures(stats["requests"] / (stats["us"] / 1e6),
                   (stats["p50_us"] / 1000, stats["p99_us"] / 1000),
                   cpu / stats["requests"] * 1000)


async def _raw_insert(app: web.Application, model_ids: list[UUID], i: int,
                      user_id: int | None = None) -> None:
    """The limit: what POST /deploy does to Postgres and Redis, with no HTTP: with a
    `user_id`, the model, grant and quota lookup first (`db/deploy_access.py`, the same
    statement as the API's), then the insert and the enqueue."""
    if user_id is not None:
        found = await task_requests.locate_for_deploy(app[PG], str(model_ids[i % MODELS]),
                                                      user_id)
        assert found is not None
    task = await tasks.insert(
        app[PG], task_id=uuid4(), kind="deploy", model_id=model_ids[i % MODELS],
        request={"embedding_model_id": str(model_ids[i % MODELS])}, request_hash="x",
        idempotency_key=None, created_by=None, metadata={}, enqueued=True,
    )
    await task_requests.enqueue(app[REDIS], app[PG], task.id)


async def _python_client(base: str, token: str, model_ids: list[UUID], n: int,
                         concurrency: int) -> tuple[Figures, Figures]:
    """POST then GET figures with aiohttp's client in this process."""
    connector = aiohttp.TCPConnector(limit=concurrency)
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

        posts = await _run(n, concurrency, post)
        gets = await _run(n, GET_CONCURRENCY, get)
    return posts, gets


async def _setup(app: web.Application, settings: Settings
                 ) -> tuple[list[UUID], str, int]:
    model_ids = [(await register(app[PG], "bench", f"m{i}", ModelSource(backend="hashing"),
                                 "public")).id for i in range(MODELS)]
    owner = await users.ensure(app[PG], "bench")
    # Every model gets deploys; the bench measures the API, not the default quotas.
    await owner_quotas.set_overrides(app[PG], owner.id, {
        "max_deployments": MODELS, "max_replicas": MODELS, "max_memory_mb": MODELS * 1024})
    assert settings.secret_key is not None
    await app[REDIS].flushdb()
    token = issue_user_token(settings.secret_key.get_secret_value(), owner.id)
    return model_ids, token, owner.id


async def _bench(args: argparse.Namespace, settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    model_ids, token, owner_id = await _setup(app, settings)
    bodies = [json.dumps({"embedding_model_id": str(m)}) for m in model_ids]
    n, c = args.requests, args.concurrency
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        await _wrk(base, token, bodies, True, c, 1, folder)  # warm-up: connections, statements
        await _run(200, c, lambda i: _raw_insert(app, model_ids, i, owner_id))
        # The lookup reads the owner's open tasks, which every POST here adds to: the
        # limit is measured just before and just after the API's run, and averaged.
        before = await _run(n, c, lambda i: _raw_insert(app, model_ids, i, owner_id))
        if args.client == "python":
            api_post, api_get = await _python_client(base, token, model_ids, n, c)
        else:
            api_post = await _wrk(base, token, bodies, True, c, args.seconds, folder)
        after = await _run(n, c, lambda i: _raw_insert(app, model_ids, i, owner_id))
        raw_post = Figures((before.rate + after.rate) / 2, before.latencies_ms,
                           (before.cpu_ms + after.cpu_ms) / 2)
        print(f"limit before and after the API's run: {before.rate:.0f}/s, {after.rate:.0f}/s")
        bare_post = await _run(n, c, lambda i: _raw_insert(app, model_ids, i))
        latest = [await tasks.latest_for_model(app[PG], m, "deploy") for m in model_ids]
        ids = [t.id for t in latest if t is not None]
        # The API's statement: the task, its model and the caller's grant, in one.
        raw_get = await _run(n, GET_CONCURRENCY, lambda i: task_requests.get_with_access(
            app[PG], TaskKind.deploy, str(ids[i % len(ids)]), owner_id))
        if args.client != "python":
            api_get = await _wrk(base, token, [f"/deploy/{t}" for t in ids], False,
                                 GET_CONCURRENCY, args.seconds, folder)
    await runner.cleanup()
    _print(args, raw_post, bare_post, api_post, raw_get, api_get)


def _print(args: argparse.Namespace, raw_post: Figures, bare_post: Figures, api_post: Figures,
           raw_get: Figures, api_get: Figures) -> None:
    client = ("wrk -t1 (another process)" if args.client == "wrk"
              else "aiohttp's client in the API's process")
    print(f"control plane, one API process on uvloop; client {client}; POST concurrency "
          f"{args.concurrency}, GET {GET_CONCURRENCY}; load average {os.getloadavg()[0]:.2f}")
    print(f"POST /deploy       {api_post.rate:7.0f} tasks/s  CPU {api_post.cpu_ms:.2f} ms/req"
          f"   limit (lookup+INSERT+enqueue in-process) {raw_post.rate:7.0f}/s  CPU "
          f"{raw_post.cpu_ms:.2f} ms   ratio {api_post.rate / raw_post.rate:.2f}")
    print(f"                   without the lookup (INSERT+enqueue) {bare_post.rate:7.0f}/s  "
          f"CPU {bare_post.cpu_ms:.2f} ms   ratio {api_post.rate / bare_post.rate:.2f}")
    (p50, p99), (l50, l99) = api_get.latencies_ms, raw_get.latencies_ms
    print(f"GET /deploy/{{id}}   p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  CPU {api_get.cpu_ms:.2f}"
          f" ms/req   limit (same SELECT in-process) p50 {l50:6.2f} ms  p99 {l99:6.2f} ms  CPU "
          f"{raw_get.cpu_ms:.2f} ms   p50 {p50 / l50:.2f}x the limit, p99 {p99 / l99:.2f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000,
                        help="in-process runs (the limits; the python client's)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--concurrency", type=int, default=32, help="POST's")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk")
    args = parser.parse_args()
    if args.client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk; make bench does)")
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
    with contextlib.suppress(ImportError):
        import uvloop  # as `greenroom api` runs

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())
