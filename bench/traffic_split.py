"""What a canary costs (issue 27): the p50 its weighted routing adds over plain routing
(limit 0.1 ms), and a 4-step canary's total time over the sum of its configured waits
(limit 1.05).

One hashing replica; two public deployments routed to it by one Python gateway process:
`plain` (one generation, as a green rollout leaves it) and `canary` (a serving and a
candidate generation, 50 % each, both pointed at the same replica so the only difference
is the gateway's work: the draw, the candidate's replicas, the secret and the counters of
two generations). Requests go one at a time, alternating plain and canary, so drift on a
shared machine hits both alike; the figure is the difference of the two p50s, and its
ratio to the 0.1 ms limit. Then, in process, the routing step alone (`_choose` and
`_pick`, what differs between the two) per request, in ns.

Then a real canary: the API, a gateway and a worker (process runtime) as their own
processes, a hashing model deployed, and a redeploy with `strategy: canary`, steps
5, 25, 50, 100, `step_s` 3 each, `min_requests` 3 (the bench times the phase, the tests judge),
under 60 requests a second: the task's `canary` phase
time against 4 x 3 s.

`--engine haproxy`: the same through `greenroom gateway --engine haproxy`, which splits
the canary by its server weights (the split backend and the `canary` frontend's hop to
each generation's slot, docs/gateway.md) and counts per generation from its counters and
log lines; the in-process routing step (the Python gateway's) is not measured then.

    .venv/bin/python bench/traffic_split.py [--requests 3000] [--step-s 3] [--engine haproxy]
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

import aiohttp
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydantic import SecretStr  # noqa: E402

from bench.gateway import HOST, gateway, replica, route  # noqa: E402
from bench.processes import stack_processes  # noqa: E402
from bench.rollout import _owner_headers  # noqa: E402
from db import deployments, replicas, traffic  # noqa: E402
from db.pool import create_pool  # noqa: E402
from db.traffic import Split  # noqa: E402
from gateway.routing import Gateway, Table  # noqa: E402
from launch import backing  # noqa: E402
from schemas.models import ModelSource  # noqa: E402
from schemas.queue import ROUTES_CHANNEL, RoutesChanged  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from schemas.tasks import ReplicaState  # noqa: E402
from service.domain.registration import register  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

LIMIT_MS = 0.1
TIME_LIMIT = 1.05
STEPS = [5, 25, 50, 100]
CANARY_RATE = 60.0
BODY = {"inputs": "a short sentence to embed, as a search query would be"}


async def _until(http: aiohttp.ClientSession, url: str, check: str | None = None) -> None:
    """Until the gateway routes `url` (and, with `check`, the candidate answered once)."""
    for _ in range(400):
        async with http.post(url, json=BODY) as resp:
            await resp.read()
            if resp.status == 200 and (check is None
                                       or resp.headers.get("X-Greenroom-Replica") == check):
                return
        await asyncio.sleep(0.02)
    raise SystemExit(f"{url} never routed")


async def _timed(http: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with http.post(url, json=BODY) as resp:
        await resp.read()
        if resp.status != 200:
            raise SystemExit(f"{url}: {resp.status}")
    return time.perf_counter() - started


def _p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def routing_ns(gw: Gateway, key: str, n: int) -> float:
    """Mean ns of the routing step that the split changes: the choice, then the pick."""
    route = gw.route(key)
    started = time.perf_counter_ns()
    for _ in range(n):
        _, chosen, _ = gw._choose(route)
        gw._pick(route, set(), chosen)
    return (time.perf_counter_ns() - started) / n


async def _split_requests(stats: str) -> int:
    """Requests HAProxy's split backends took (its stats page's CSV)."""
    async with aiohttp.ClientSession() as http, http.get(stats + "/stats;csv") as resp:
        rows = [row.split(",") for row in (await resp.text()).splitlines()]
    return sum(int(row[7] or 0) for row in rows
               if len(row) > 7 and row[0].startswith("split") and row[1] == "BACKEND")


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    port = free_port(HOST)
    haproxy = args.engine == "haproxy"
    with replica(tmp, "hashing", port) as endpoint:
        async with gateway(tmp, 1, with_haproxy=haproxy) as planes:
            async with aiohttp.ClientSession() as http:
                await backing.wait_for_http(http, endpoint + "/health", 60)
            await route(planes, "plain", endpoint)
            await route(planes, "canary", endpoint)
            pool = planes.pool
            model_id = (await deployments.get_by_name(pool, "canary")).model_id  # type: ignore[union-attr]
            _, candidate = await deployments.begin_generation(pool, model_id, "canary")
            candidate_id = uuid4()
            await replicas.insert(pool, replica_id=candidate_id, model_id=model_id,
                                  generation=candidate, task_id=None, runtime="process")
            await replicas.set_started(pool, candidate_id, "bench", endpoint)
            await replicas.set_state(pool, [candidate_id], ReplicaState.ready)
            await traffic.set_split(pool, model_id, Split(candidate, 50))
            redis = Redis.from_url(planes.redis_url)
            await redis.publish(ROUTES_CHANNEL, RoutesChanged(model_id).encode())
            base = planes.haproxy if haproxy and planes.haproxy else planes.gateway
            plain_url = f"{base}/serve/plain/embed"
            canary_url = f"{base}/serve/canary/embed"
            async with aiohttp.ClientSession() as http:
                await _until(http, plain_url)
                await _until(http, canary_url, check=str(candidate_id))
                for _ in range(200):  # warm both paths
                    await _timed(http, plain_url)
                    await _timed(http, canary_url)
                split_before = (await _split_requests(planes.haproxy_stats)
                                if planes.haproxy_stats else 0)
                plain, canary = [], []
                for _ in range(args.requests):
                    plain.append(await _timed(http, plain_url))
                    canary.append(await _timed(http, canary_url))
            if haproxy:
                assert planes.haproxy_stats is not None
                split = await _split_requests(planes.haproxy_stats) - split_before
                if split < args.requests:  # the canary went to the Python gateway instead
                    raise SystemExit(f"HAProxy's split backends took {split} of "
                                     f"{args.requests} canary requests")
            gw = Gateway(pool, redis, poll_s=3600)
            gw._table = Table.build(await deployments.routes(pool))
            plain_ns = routing_ns(gw, "plain", 200_000)
            canary_ns = routing_ns(gw, "canary", 200_000)
            await redis.aclose()
    added = _p50_ms(canary) - _p50_ms(plain)
    where = ("HAProxy (--engine haproxy; the canary split by its server weights)" if haproxy
             else "one gateway process")
    print(f"requests one at a time, {args.requests} each, alternating, {where}:")
    print(f"  plain  p50 {_p50_ms(plain):.3f} ms  p99 {_pct(plain, 0.99):.3f} ms")
    print(f"  canary p50 {_p50_ms(canary):.3f} ms  p99 {_pct(canary, 0.99):.3f} ms "
          "(50 % to the candidate)")
    print(f"  p50 added by weighted routing: {added:+.3f} ms; limit {LIMIT_MS} ms; "
          f"ratio {added / LIMIT_MS:+.2f}")
    if haproxy:
        return
    print(f"routing step in process: plain {plain_ns:.0f} ns, canary {canary_ns:.0f} ns "
          f"per request: {canary_ns - plain_ns:+.0f} ns "
          f"(ratio to the limit {(canary_ns - plain_ns) / (LIMIT_MS * 1e6):+.4f})")


async def _task(http: aiohttp.ClientSession, api: str, headers: dict[str, str],
                config: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{api}/deploy", headers=headers, json={
            "embedding_model_id": "bench/canary-time", "config": config}) as resp:
        task_id = (await resp.json())["task_id"]
    for _ in range(12000):
        async with http.get(f"{api}/deploy/{task_id}", headers=headers) as resp:
            task: dict[str, Any] = await resp.json()
        if task["status"] not in ("pending", "processing"):
            return task
        await asyncio.sleep(0.05)
    raise SystemExit(f"deploy {task_id} did not finish")


async def _load(url: str, rate: float, stop: asyncio.Event) -> tuple[int, int]:
    """Requests sent one every 1/rate s until `stop`; (sent, failed)."""
    sent = failed = 0
    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            nonlocal failed
            try:
                async with http.post(url, json=BODY) as resp:
                    await resp.read()
                    failed += resp.status != 200
            except (aiohttp.ClientError, TimeoutError):
                failed += 1

        pending = []
        while not stop.is_set():
            pending.append(asyncio.create_task(one()))
            sent += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*pending)
    return sent, failed


async def canary_time(tmp: Path, step_s: float, engine: Literal["python", "haproxy"]
                      ) -> None:
    keep: list[Any] = []
    admin = backing.postgres_admin_dsn(tmp, keep)
    dsn = await backing.create_database(admin, f"greenroom_bench_canary_{os.getpid()}")
    port, gateway_port = free_port(HOST), free_port(HOST)
    settings = Settings(database_url=dsn, redis_url=backing.redis_url(tmp, keep),
                        secret_key=SecretStr(secrets.token_urlsafe(32)), runtime="process",
                        state_dir=tmp / "state", api_port=port, gateway_port=gateway_port,
                        log_level="warning", drain_timeout_s=10, stop_grace_s=5,
                        gateway_engine=engine)
    pool = await create_pool(dsn, max_size=4)
    try:
        model = await register(pool, "bench", "canary-time",
                               ModelSource(backend="hashing", dimension=384), "public")
        headers = _owner_headers(settings, model.owner_id)
        with _processes(settings, tmp):
            api, gw = f"http://{HOST}:{port}", f"http://{HOST}:{gateway_port}"
            async with aiohttp.ClientSession() as http:
                await backing.wait_for_http(http, api + "/healthz")
                await backing.wait_for_http(http, gw + "/healthz")
                first = await _task(http, api, headers, {})
                assert first["status"] == "done", first
                stop = asyncio.Event()
                load = asyncio.create_task(_load(f"{gw}/serve/canary-time/embed",
                                                 CANARY_RATE, stop))
                await asyncio.sleep(1)
                task = await _task(http, api, headers, {"rollout": {
                    "strategy": "canary", "canary": {"steps": STEPS, "step_s": step_s,
                                                     "min_requests": 3}}})
                stop.set()
                sent, failed = await load
    finally:
        await pool.close()
        await backing.drop_database(admin, dsn)
        for item in keep:
            if isinstance(item, subprocess.Popen):
                item.terminate()
    if task["status"] != "done":
        raise SystemExit(f"the canary did not pass: {task['detail']}")
    took = task["metadata"]["timings"]["canary"]
    waits = len(STEPS) * step_s
    print(f"a {len(STEPS)}-step canary ({STEPS}, step_s {step_s:g}) under {CANARY_RATE:g} "
          f"req/s, process runtime, {engine} gateway: canary phase {took:.2f} s over the "
          f"configured {waits:g} s: ratio {took / waits:.3f} (limit {TIME_LIMIT}); "
          f"{failed} of {sent} requests failed")
    for step in task["metadata"]["rollout"]["steps"]:
        print(f"  {step['weight']:3d} %: {step['elapsed_s']:.2f} s, candidate "
              f"{step['candidate']['requests']} requests, {step['verdict']}")


@contextlib.contextmanager
def _processes(settings: Settings, tmp: Path) -> Iterator[None]:
    """The API, a gateway and a worker, with the settings this bench sets (only those)."""
    env = dict(os.environ)
    for key in settings.model_fields_set:
        value = getattr(settings, key)
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        env[f"GREENROOM_{key.upper()}"] = str(raw)
    with stack_processes(env, tmp):
        yield


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="per deployment")
    parser.add_argument("--step-s", type=float, default=3.0, help="each canary step")
    parser.add_argument("--engine", choices=("python", "haproxy"), default="python",
                        help="the gateway engine that splits")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        await bench(args, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        await canary_time(Path(tmp), args.step_s,
                          "haproxy" if args.engine == "haproxy" else "python")


if __name__ == "__main__":
    from schemas.logs import configure_logging

    configure_logging("warning")
    asyncio.run(main())
