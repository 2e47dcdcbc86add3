"""Autoscaling benchmark (issue 14) on the process runtime, with the hashing backend's test
knobs giving one replica a known capacity: SLOTS requests at once, each taking
`--service-ms` (default 50 ms), so SLOTS / service time requests a second.

The service time sets how soon any concurrency-based autoscaler can see a step: at 3x
capacity the requests in flight reach the gateway's jump (4, gateway/load_signal.py)
after about 4 / (3 x capacity): 0.03 s at 50 ms, 0.1 s at 200 ms. 50 ms sits between one
input and one batch of a small embedding model here (all-MiniLM-L6-v2: 4-13 ms for one
input, ~90 ms for a batch of 32 at 364 inputs a second in bench/model_server.py's torch
run); `--service-ms 200` is the slower knob the autoscaling tests (tests/worker/) use.

From one run it prints:
- reaction time: a load step to 3x one replica's capacity → the first request an added
  replica serves (when it was sent: that replica began serving it then), next to that
  replica's own start-to-healthy time in the same run (its row's insert, just before the
  runtime starts it, to its `ready`, the worker polling /health every 50 ms), as a ratio
  (goal ≤ 1.2): what the autoscaler adds to the start it cannot avoid. Beside it, the
  same reaction over a replica started alone before the load (the same runtime and
  replica, polled as the worker polls it), and where the reaction went: the decision (the
  scale task's creation), its claim by the worker, each added replica's start, and the
  first added replica serving;
- throughput through the gateway at max replicas against max x one replica's throughput
  measured straight at one replica (goal ≥ 0.9);
- failed requests over the whole run (goal 0);
- the load average (1 min) before and after, since two shared cores shift every figure.

The API, a gateway and a worker run as their own processes on a fresh database (dropped
at the end); the load client runs here. Traffic goes only to 127.0.0.1.

    flock /tmp/greenroom-bench.lock .venv/bin/python bench/autoscale.py [--max 3]
        [--service-ms 50] [--real-model]

`--real-model` (issue 28): the bundled all-MiniLM-L6-v2 with the default `auto` backend
(the worker's ONNX export, prepared before the run) under the same knobs, so the reaction
includes a real replica's start; the replicas started alone load the same export.
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
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
from pydantic import SecretStr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from db.pool import create_pool  # noqa: E402
from launch import backing  # noqa: E402
from launch.backing import settings_env  # noqa: E402
from schemas.models import ModelSource  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from schemas.tokens import issue_user_token  # noqa: E402
from service.domain.registration import register  # noqa: E402
from worker import health  # noqa: E402
from worker.runtimes.base import ReplicaSpec  # noqa: E402
from worker.runtimes.process import ProcessRuntime, free_port  # noqa: E402

HOST = "127.0.0.1"
NAME = "bench-autoscale"
# One replica serves SLOTS requests at once, each taking --service-ms (the module docstring
# says why 50 ms by default; the autoscaling tests use 200 ms).
SLOTS = 2
PANIC_WINDOW_S = 2
BODY = {"inputs": "a short sentence to embed"}


def source(service_ms: int) -> dict[str, Any]:
    """The model's source: the hashing backend with its test knobs."""
    return {"backend": "hashing", "dimension": 384, "test_service_time_ms": service_ms,
            "test_concurrency": SLOTS}


def real_sources(service_ms: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(registered, started alone): the bundled model, `auto`, with the test knobs; and the
    ONNX export the worker prepares for it, as a replica of it is started."""
    from model_server.config import DEFAULT_MODEL
    from model_server.onnx_prepare import prepare
    from worker.auto_backend import cache_dir

    knobs = {"test_service_time_ms": service_ms, "test_concurrency": SLOTS}
    cache = cache_dir(Settings())
    decision = prepare(DEFAULT_MODEL, cache)
    assert decision["backend"] == "onnx", decision
    return ({"location": DEFAULT_MODEL, **knobs},
            {"backend": "onnx", "location": DEFAULT_MODEL, "export_dir": str(cache),
             "export_entry": str(cache / decision["fingerprint"]), **knobs})


class Tally:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.by_replica: Counter[str] = Counter()
        # replica → when the first request it answered was sent (it began serving then)
        self.first_seen: dict[str, float] = {}

    async def one(self, http: aiohttp.ClientSession, url: str) -> None:
        sent = time.perf_counter()
        try:
            async with http.post(url, json=BODY) as resp:
                await resp.read()
                if resp.status != 200:
                    self.failed.append(f"HTTP {resp.status}")
                    return
                replica = resp.headers.get("X-Greenroom-Replica", "direct")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed.append(type(exc).__name__)
            return
        self.by_replica[replica] += 1
        self.first_seen[replica] = min(sent, self.first_seen.get(replica, sent))


async def open_loop(http: aiohttp.ClientSession, url: str, tally: Tally, rate: float,
                    duration_s: float) -> None:
    """One request every 1/rate s for duration_s, whatever the answers take (bounded)."""
    loop, pending = asyncio.get_running_loop(), []
    start = loop.time()
    for i in range(int(rate * duration_s)):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        pending.append(asyncio.create_task(tally.one(http, url)))
    await asyncio.gather(*pending)


async def closed_loop(http: aiohttp.ClientSession, url: str, tally: Tally, clients: int,
                      duration_s: float) -> float:
    """`clients` back to back for duration_s; answers a second."""
    deadline = time.perf_counter() + duration_s
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await tally.one(http, url)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


async def replica_start_times(settings: Settings, count: int,
                              model_source: dict[str, Any]) -> tuple[list[float], float]:
    """A replica's own start-to-healthy (s) and one replica's throughput, straight to it."""
    # A folder and cluster of its own: the stack's reconciler would remove these replicas
    # as orphans (they have no row).
    own = settings.model_copy(update={"state_dir": settings.state_dir.parent / "own",
                                      "cluster": f"{settings.cluster}-own"})
    runtime, times, throughput = ProcessRuntime(own), [], 0.0
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), generation=1,
                               model_identifier=f"bench/{NAME}", task_id=None,
                               source=dict(model_source))
            started = time.perf_counter()
            replica = await runtime.start(spec)
            await health.wait_ready(runtime, http, replica,
                                    asyncio.get_running_loop().time() + 60)
            times.append(time.perf_counter() - started)
            if i == 0:
                throughput = await closed_loop(http, replica.endpoint + "/embed", Tally(),
                                               4 * SLOTS, 5)
            await runtime.stop(replica.runtime_ref, 2)
            await runtime.remove(replica.runtime_ref)
    await runtime.close()
    return times, throughput


def _start(settings: Settings, tmp: Path) -> list[subprocess.Popen[bytes]]:
    """The API, a gateway and one worker as their own processes, logging into `tmp`."""
    procs = []
    for module in ("service", "gateway.server", "worker"):
        with (tmp / f"{module}.log").open("ab") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", module], cwd=REPO,
                                          env=settings_env(settings), stdout=log,
                                          stderr=subprocess.STDOUT))
    return procs


@contextlib.asynccontextmanager
async def stack(tmp: Path, interval_s: float, start_concurrency: int,
                model_source: dict[str, Any]) -> AsyncIterator[
        tuple[Settings, str, str, dict[str, str], asyncpg.Pool]]:
    keep: list[Any] = []
    admin = backing.postgres_admin_dsn(tmp, keep)
    dsn = await backing.create_database(admin, f"greenroom_bench_autoscale_{os.getpid()}")
    settings = Settings(database_url=dsn, redis_url=backing.redis_url(tmp, keep),
                        secret_key=SecretStr(secrets.token_urlsafe(32)), runtime="process",
                        state_dir=tmp / "state", api_port=free_port(HOST),
                        gateway_port=free_port(HOST), log_level="warning",
                        drain_timeout_s=10, stop_grace_s=5, cluster=f"bench-{os.getpid()}",
                        autoscale_interval_s=interval_s,
                        scale_start_concurrency=start_concurrency)
    pool = await create_pool(dsn, max_size=2)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        model = await register(pool, "bench", NAME, ModelSource.model_validate(model_source),
                               "public")
        assert settings.secret_key is not None
        headers = {"Authorization": "Bearer " + issue_user_token(
            settings.secret_key.get_secret_value(), model.owner_id)}
        procs = _start(settings, tmp)
        api = f"http://{HOST}:{settings.api_port}"
        gateway = f"http://{HOST}:{settings.gateway_port}"
        async with aiohttp.ClientSession() as http:
            await backing.wait_for_http(http, api + "/healthz")
            await backing.wait_for_http(http, gateway + "/healthz")
        yield settings, api, gateway, headers, pool
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        await pool.close()
        await backing.drop_database(admin, dsn)
        for pid in backing.replica_processes(settings.state_dir):
            with contextlib.suppress(OSError):
                os.killpg(pid, 9)
        for item in keep:
            if isinstance(item, subprocess.Popen):
                item.terminate()


async def deploy(http: aiohttp.ClientSession, api: str, headers: dict[str, str],
                 maximum: int) -> None:
    config = {"autoscaling_enabled": True, "autoscaling_min": 1, "autoscaling_max": maximum,
              "autoscaling_target_concurrency": SLOTS, "autoscaling_target_utilization": 0.8,
              "autoscaling_stable_window_s": 6, "autoscaling_panic_window_s": PANIC_WINDOW_S,
              "autoscaling_scale_down_delay_s": 4}
    async with http.post(f"{api}/deploy", headers=headers,
                         json={"embedding_model_id": f"bench/{NAME}", "config": config}) as r:
        task = await r.json()
    for _ in range(600):
        async with http.get(f"{api}/deploy/{task['task_id']}", headers=headers) as r:
            task = await r.json()
        if task["status"] not in ("pending", "processing"):
            break
        await asyncio.sleep(0.1)
    assert task["status"] == "done", task


async def wait_ready(http: aiohttp.ClientSession, api: str, headers: dict[str, str],
                     count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"{api}/api/v2/deploy/bench/{NAME}/status", headers=headers) as r:
            if (await r.json()).get("replicas_current") == count:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{count} replicas not ready within {timeout_s:g} s")


@dataclass(frozen=True)
class Scale:
    """The first scale task after the load step, from the database."""

    created: float  # Unix time of the decision (the task's insert)
    claimed: float  # ... and of a worker claiming it
    desired: str
    timings: str
    starts: dict[str, float]  # added replica id → its row's insert to its `ready`, s
    inserted: dict[str, float]  # added replica id → Unix time of its row's insert


async def first_scale(pool: asyncpg.Pool, after: float) -> Scale | None:
    """The first scale task created after `after` and each replica it added."""
    row = await pool.fetchrow(
        "SELECT id, extract(epoch FROM created_at) AS c, extract(epoch FROM started_at) AS s, "
        "metadata->'timings' AS t, metadata->>'replicas_desired' AS d "
        "FROM tasks WHERE kind = 'scale' AND created_at > to_timestamp($1) "
        "ORDER BY created_at LIMIT 1", after)
    if row is None or row["s"] is None:
        return None
    added = await pool.fetch(
        "SELECT id, extract(epoch FROM updated_at - created_at) AS up, "
        "extract(epoch FROM created_at) AS c FROM replicas "
        "WHERE task_id = $1 AND state = 'ready' ORDER BY created_at",  # updated_at: its ready
        row["id"])
    return Scale(float(row["c"]), float(row["s"]), str(row["d"]), str(row["t"]),
                 {str(r["id"]): float(r["up"]) for r in added},
                 {str(r["id"]): float(r["c"]) for r in added})


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    load_before = os.getloadavg()[0]
    registered = alone = source(args.service_ms)
    if args.real_model:
        registered, alone = real_sources(args.service_ms)
    running = stack(tmp, args.interval, args.start_concurrency, registered)
    async with running as (settings, api, gateway, headers, pool):
        starts, one_replica = await replica_start_times(settings, 3, alone)
        own_start = statistics.median(starts)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=0)) as http:
            await deploy(http, api, headers, args.max)
            url = f"{gateway}/serve/{NAME}/embed"
            tally = Tally()
            # Light load first: the first replica's id, and time for the decider to take the
            # deployment (its next tick) and watch a whole panic window before the step (it
            # decides nothing before that).
            await open_loop(http, url, tally, 2, args.interval + PANIC_WINDOW_S + 2)
            first = set(tally.by_replica)
            step, step_wall = time.perf_counter(), time.time()
            capacity = SLOTS / (args.service_ms / 1000)
            await open_loop(http, url, tally, 3 * capacity, args.step_s)
            added = {r: t for r, t in tally.first_seen.items() if r not in first}
            first_added = min(added, key=added.__getitem__) if added else None
            reaction = added[first_added] - step if first_added else float("inf")
            scale = await first_scale(pool, step_wall - 1)
            await wait_ready(http, api, headers, args.max, 60)
            at_max = await closed_loop(http, url, tally, 4 * SLOTS * args.max, 8)
    print(f"autoscale interval {args.interval:g} s (and woken by gateways' jump "
          f"announcements), gateway report every ~1 s and at once on a jump; a scale starts "
          f"{args.start_concurrency or 'all its'} replicas at once; a replica serves {SLOTS} "
          f"requests at once, each taking {args.service_ms} ms")
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"replica start-to-healthy (own, median of {len(starts)}): {own_start:.2f} s "
          f"({', '.join(f'{s:.2f}' for s in starts)})")
    own = scale.starts.get(first_added or "") if scale is not None else None
    if own is not None:
        print(f"reaction: load step → first added replica serving: {reaction:.2f} s, over "
              f"that replica's own start-to-healthy in this run {own:.2f} s: ratio "
              f"{reaction / own:.2f} (goal ≤ 1.2)")
    else:
        print(f"reaction: load step → first added replica serving: {reaction:.2f} s "
              f"(the replica's own start was not found: no ratio against it)")
    print(f"  the same reaction over a replica started alone before the load "
          f"({own_start:.2f} s): {reaction / own_start:.2f}")
    if scale is not None:
        decided, claimed = scale.created - step_wall, scale.claimed - step_wall
        ups = ", ".join(f"{up:.2f}" for up in scale.starts.values())
        if own is not None and first_added in scale.inserted:
            row_at = scale.inserted[first_added] - step_wall
            print(f"  the first added replica: row inserted at {row_at:.2f} s, ready at "
                  f"{row_at + own:.2f} s, its first request sent at {reaction:.2f} s")
        print(f"  of which: decision (scale task created) at {decided:.2f} s, claimed by the "
              f"worker at {claimed:.2f} s, start to serving {reaction - claimed:.2f} s "
              f"(scale to {scale.desired} replicas, phases {scale.timings}, each added "
              f"replica row → ready: {ups} s)")
    print(f"throughput at max {args.max} replicas: {at_max:.1f} req/s vs {args.max} x "
          f"{one_replica:.1f} (one replica, direct) = {args.max * one_replica:.1f}; ratio "
          f"{at_max / (args.max * one_replica):.2f} (goal ≥ 0.9)")
    sent = sum(tally.by_replica.values()) + len(tally.failed)
    print(f"failed requests: {len(tally.failed)} of {sent} (goal 0) "
          f"{Counter(tally.failed).most_common(3)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=3, help="autoscaling_max")
    parser.add_argument("--interval", type=float, default=Settings().autoscale_interval_s,
                        help="GREENROOM_AUTOSCALE_INTERVAL_S of the worker")
    parser.add_argument("--start-concurrency", type=int,
                        default=Settings().scale_start_concurrency,
                        help="GREENROOM_SCALE_START_CONCURRENCY of the worker (0: all at once)")
    parser.add_argument("--service-ms", type=int, default=50,
                        help="each request's service time on a replica (the test knob)")
    parser.add_argument("--step-s", type=float, default=15, help="length of the load step")
    parser.add_argument("--real-model", action="store_true",
                        help="the bundled MiniLM on the default auto backend (ONNX)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
