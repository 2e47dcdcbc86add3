"""What a canary's weighted routing costs a request (issue 27: the p50 it adds over plain
routing <= 0.1 ms).

One hashing replica; two public deployments routed to it by one Python gateway process:
`plain` (one generation, as a green rollout leaves it) and `canary` (a serving and a
candidate generation, 50 % each, both pointed at the same replica so the only difference
is the gateway's work: the draw, the candidate's replicas, the secret and the counters of
two generations). Requests go one at a time, alternating plain and canary, so drift on a
shared machine hits both alike; the figure is the difference of the two p50s, and its
ratio to the 0.1 ms limit. Then, in process, the routing step alone (`_choose` and
`_pick`, what differs between the two) per request, in ns.

    .venv/bin/python bench/traffic_split.py [--requests 3000]
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import aiohttp
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gateway import HOST, gateway, replica, route  # noqa: E402
from db import deployments, replicas, traffic  # noqa: E402
from db.traffic import Split  # noqa: E402
from gateway.routing import Gateway, Table  # noqa: E402
from launch import backing  # noqa: E402
from schemas.queue import ROUTES_CHANNEL, RoutesChanged  # noqa: E402
from schemas.tasks import ReplicaState  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

LIMIT_MS = 0.1
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


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    port = free_port(HOST)
    with replica(tmp, "hashing", port) as endpoint:
        async with gateway(tmp, 1, with_haproxy=False) as planes:
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
            plain_url = f"{planes.gateway}/serve/plain/embed"
            canary_url = f"{planes.gateway}/serve/canary/embed"
            async with aiohttp.ClientSession() as http:
                await _until(http, plain_url)
                await _until(http, canary_url, check=str(candidate_id))
                for _ in range(200):  # warm both paths
                    await _timed(http, plain_url)
                    await _timed(http, canary_url)
                plain, canary = [], []
                for _ in range(args.requests):
                    plain.append(await _timed(http, plain_url))
                    canary.append(await _timed(http, canary_url))
            gw = Gateway(pool, redis, poll_s=3600)
            gw._table = Table.build(await deployments.routes(pool))
            plain_ns = routing_ns(gw, "plain", 200_000)
            canary_ns = routing_ns(gw, "canary", 200_000)
            await redis.aclose()
    added = _p50_ms(canary) - _p50_ms(plain)
    print(f"requests one at a time, {args.requests} each, alternating, one gateway process:")
    print(f"  plain  p50 {_p50_ms(plain):.3f} ms  p99 {_pct(plain, 0.99):.3f} ms")
    print(f"  canary p50 {_p50_ms(canary):.3f} ms  p99 {_pct(canary, 0.99):.3f} ms "
          "(50 % to the candidate)")
    print(f"  p50 added by weighted routing: {added:+.3f} ms; limit {LIMIT_MS} ms; "
          f"ratio {added / LIMIT_MS:+.2f}")
    print(f"routing step in process: plain {plain_ns:.0f} ns, canary {canary_ns:.0f} ns "
          f"per request: {canary_ns - plain_ns:+.0f} ns "
          f"(ratio to the limit {(canary_ns - plain_ns) / (LIMIT_MS * 1e6):+.4f})")


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="per deployment")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        await bench(args, Path(tmp))


if __name__ == "__main__":
    from schemas.logs import configure_logging

    configure_logging("warning")
    asyncio.run(main())
