"""Scale of the control plane: 1,000 deployments and 10,000 replica rows.

Seeds a throwaway database straight through db/ (each deployment rolled out twice: the
first generation's replicas stopped, the second's ready, `--replicas` each), then prints:

- routes reload: one gateway `reload()` (the routes query and the table swap), against
  the 1 s goal;
- one reconciler pass (`worker.reconciler.reconcile_once`), against the 1 s goal;
- the gateway's lookup cost per request (route by name, then the least-busy pick) at that
  size, against the same lookup in a table of one deployment.

The reconciler runs against a fake runtime (named so: 10,000 real replicas cannot run on
one machine) that answers from memory that every ready replica runs, so the pass does all
its database work (every serving replica inspected, every listed one judged, none
replaced) and none of an engine's. No replica endpoint is ever dialed.

    .venv/bin/python bench/scale.py [--deployments 1000] [--replicas 5] [--runs 5]
"""

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
from arq import create_pool as create_arq_pool
from arq.connections import RedisSettings
from pydantic import SecretStr
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db import deployments, models, replicas, users
from db.deployments import Route
from db.pool import Executor, create_pool
from gateway.routing import Gateway, Table
from launch import backing
from schemas.queue import decode_job, encode_job
from schemas.settings import Settings
from schemas.tasks import ReplicaState
from worker.context import WorkerContext
from worker.reconciler import enqueue_pending, reconcile_once, release_expired, remove_orphans
from worker.repair import replace_crashed
from worker.runtimes.base import ReplicaInfo, ReplicaSpec, StartedReplica

GOAL_S = 1.0
SEED_CONCURRENCY = 8


class InMemoryRuntime:
    """A fake runtime: every replica it is told about runs, and it starts nothing."""

    name = "fake"
    local_host: str | None = None

    def __init__(self) -> None:
        self.replicas: dict[str, ReplicaInfo] = {}

    async def start(self, spec: ReplicaSpec) -> StartedReplica:
        raise AssertionError("the bench's reconciler pass must replace nothing")

    async def inspect(self, runtime_ref: str) -> ReplicaInfo | None:
        return self.replicas.get(runtime_ref)

    async def stop(self, runtime_ref: str, grace_s: float) -> None:
        self.replicas.pop(runtime_ref, None)

    async def remove(self, runtime_ref: str) -> None:
        self.replicas.pop(runtime_ref, None)

    async def remove_many(self, runtime_refs: list[str], grace_s: float) -> None:
        for ref in runtime_refs:
            self.replicas.pop(ref, None)

    async def logs(self, runtime_ref: str, tail: int = 100) -> tuple[str, str]:
        return "", ""

    async def list(self) -> list[ReplicaInfo]:
        return list(self.replicas.values())

    async def close(self) -> None:
        return None


async def _seed_one(pool: Executor, owner_id: int, i: int, per: int,
                    runtime: InMemoryRuntime) -> None:
    """Model `i`, deployed twice: generation 1's replicas stopped, generation 2's ready."""
    model = await models.create(pool, model_id=uuid4(), owner_id=owner_id, name=f"m{i}",
                                source={"backend": "hashing", "dimension": 64},
                                access_level="public")
    name = f"scale-{i}"
    for _ in range(2):
        _, generation = await deployments.begin_generation(pool, model.id, name)
        for j in range(per):
            rid = uuid4()
            await replicas.insert(pool, replica_id=rid, model_id=model.id,
                                  generation=generation, task_id=None, runtime="fake",
                                  memory_mb=256)
            # Never dialed: the bench sends no traffic to replicas.
            endpoint = f"http://10.{i // 250}.{i % 250}.{j}:8080"
            await replicas.set_started(pool, rid, str(rid), endpoint)
            runtime.replicas[str(rid)] = ReplicaInfo(
                runtime_ref=str(rid), replica_id=rid, model_id=model.id,
                generation=generation, running=True, endpoint=endpoint)
        draining = await deployments.switch(pool, model.id, generation, name, {})
        if draining:
            await replicas.set_state(pool, draining, ReplicaState.stopped)
            for rid in draining:
                runtime.replicas.pop(str(rid), None)


async def seed(pool: Any, count: int, per: int, runtime: InMemoryRuntime) -> float:
    owner = await users.create(pool, username="scale", password_hash="x")
    started = time.perf_counter()
    todo = iter(range(count))

    async def seeder() -> None:
        for i in todo:
            await _seed_one(pool, owner.id, i, per, runtime)

    await asyncio.gather(*(seeder() for _ in range(SEED_CONCURRENCY)))
    await pool.execute("ANALYZE")
    return time.perf_counter() - started


async def _timed(runs: int, op: Any) -> list[float]:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        await op()
        took.append(time.perf_counter() - started)
    return took


def lookup_cost_ns(gateway: Gateway, keys: list[str], n: int) -> float:
    """Mean ns of one request's routing work: the table lookup, then the pick."""
    rng = random.Random(1)
    chosen = [rng.choice(keys) for _ in range(n)]
    started = time.perf_counter_ns()
    for key in chosen:
        gateway._pick(gateway.route(key), set())
    return (time.perf_counter_ns() - started) / n


def one_route_gateway(pool: Any, redis: Redis, route: Route) -> Gateway:
    small = Gateway(pool, redis, poll_s=3600)
    small._table = Table.build([route])
    return small


def _line(what: str, took: list[float]) -> str:
    median = statistics.median(took)
    return (f"{what:<34} median {median * 1000:7.1f} ms  max {max(took) * 1000:7.1f} ms  "
            f"goal {GOAL_S * 1000:.0f} ms  ratio {median / GOAL_S:.3f}")


async def bench(args: argparse.Namespace, dsn: str, redis_url: str) -> None:
    pool = await create_pool(dsn, max_size=SEED_CONCURRENCY + 2)
    runtime = InMemoryRuntime()
    seed_s = await seed(pool, args.deployments, args.replicas, runtime)
    rows = await pool.fetchval("SELECT count(*) FROM replicas")
    ready = await pool.fetchval("SELECT count(*) FROM replicas WHERE state = 'ready'")
    redis = Redis.from_url(redis_url)
    gateway = Gateway(pool, redis, poll_s=3600)
    reload_s = await _timed(args.runs, gateway.reload)
    routes = len({r.model_id for r in gateway._table.by_key.values()})

    settings = Settings(database_url=dsn, redis_url=redis_url, log_level="warning",
                        secret_key=SecretStr(secrets.token_urlsafe(32)))
    arq = await create_arq_pool(RedisSettings.from_dsn(redis_url), job_serializer=encode_job,
                                job_deserializer=decode_job)
    async with aiohttp.ClientSession() as http:
        ctx = WorkerContext(settings=settings, pool=pool, redis=arq, runtime=runtime,
                            http=http, worker_id="bench")
        await reconcile_once(ctx)  # warm: prepared statements, connections
        pass_s = await _timed(args.runs, lambda: reconcile_once(ctx))

        async def orphans() -> int:  # with the runtime listing the pass makes for it
            return await remove_orphans(ctx, await ctx.runtime.list())
        steps = {
            "replace_crashed": await _timed(args.runs, lambda: replace_crashed(ctx, set())),
            "remove_orphans": await _timed(args.runs, orphans),
            "release_expired": await _timed(args.runs, lambda: release_expired(ctx)),
            "enqueue_pending": await _timed(args.runs, lambda: enqueue_pending(ctx)),
        }
    served = await pool.fetchval("SELECT count(*) FROM replicas WHERE state = 'ready'")
    assert served == ready, f"the pass changed replicas: {ready} ready before, {served} after"

    keys = [r.name for r in gateway._table.by_key.values()]
    big_ns = lookup_cost_ns(gateway, keys, args.lookups)
    first = next(iter(gateway._table.by_key.values()))
    small_ns = lookup_cost_ns(one_route_gateway(pool, redis, first), [first.name],
                              args.lookups)
    print(f"scale: {args.deployments:,} deployments, {rows:,} replica rows ({ready:,} ready), "
          f"seeded in {seed_s:.1f}s; {args.runs} runs each")
    print(_line(f"routes reload ({routes:,} routes)", reload_s))
    print(_line("reconciler pass", pass_s))
    print("  of which " + ", ".join(f"{name} {statistics.median(took) * 1000:.0f} ms"
                                    for name, took in steps.items()))
    print(f"{'gateway lookup + pick':<34} {big_ns:7.0f} ns/request at {routes:,} routes, "
          f"{small_ns:.0f} ns at 1 route  ratio {big_ns / small_ns:.2f}")
    await arq.aclose()
    await redis.aclose()
    await gateway.close()
    await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=5,
                        help="replicas per generation (two generations per deployment)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args()
    keep: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        admin = backing.postgres_admin_dsn(Path(tmp), keep)
        redis_url = backing.redis_url(Path(tmp), keep)
        dsn = await backing.create_database(admin, f"greenroom_scale_{os.getpid()}")
        try:
            await bench(args, dsn, redis_url)
        finally:
            await backing.drop_database(admin, dsn)
            for item in keep:
                if hasattr(item, "terminate"):
                    item.terminate()


if __name__ == "__main__":
    from schemas.logs import configure_logging

    configure_logging("warning")
    asyncio.run(main())
