"""Rollout and data-plane benchmark on the docker runtime, with the hashing test image.

Rollout: time from POST /deploy to the first embedding the new generation serves through
the gateway, against its limit measured in the same run: the same container started
straight through the Engine (DockerRuntime.start) until its /health answers 200.

Data plane: p50/p99 latency and throughput of TEI POST /embed at a fixed concurrency,
(a) to the replica directly, (b) through the gateway, (c) through nginx proxying to the
same replica with a keepalive upstream, as a peer side by side.

The API, the gateway and a worker run as their own processes; the load client runs here,
so the three paths share one client, one replica and this machine's cores. A fresh
database is created and dropped; the model's containers are removed at the end.

Rollback (issue 26): POST /api/v2/deploy/{model}/rollback inside the warm window →
first answer of the warm generation, against a route flip's own time in the same run (a
redeploy's time from its replicas healthy to its first answer), and the worker's claim →
flipped against its 100 ms limit.

    .venv/bin/python bench/rollout.py [--rollouts 3] [--requests 3000] [--concurrency 16]
                                      [--no-data-plane]
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
from pydantic import SecretStr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gateway import NGINX_CONF  # noqa: E402
from bench.processes import stack_processes  # noqa: E402
from db import deployments, replicas, tasks  # noqa: E402
from db.pool import create_pool  # noqa: E402
from launch import backing, image  # noqa: E402
from schemas import replica_auth  # noqa: E402
from schemas.models import ModelSource  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from schemas.tokens import issue_user_token  # noqa: E402
from service.domain.registration import register  # noqa: E402
from worker.runtimes.base import ReplicaSpec  # noqa: E402
from worker.runtimes.docker import DockerRuntime  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

HOST = "127.0.0.1"
NAME = "bench-rollout"
BODY = {"inputs": "a short sentence to embed, as a search query would be"}
POLL_S = 0.01  # how often both the rollout and its limit look for the first answer
WARMUP = 200
ROUNDS = 3
# Phases of a rollout before the first answer of the new generation can come.
ROLLOUT_STEPS = ("starting_replicas", "health_checking", "switching")


# ---------------------------------------------------------------- processes and database


@dataclass
class Stack:
    settings: Settings
    pool: asyncpg.Pool
    api: str
    gateway: str
    headers: dict[str, str]
    tmp: Path
    model_id: UUID


def _env(settings: Settings) -> dict[str, str]:
    # backing's encoding: a list setting (allowed_images) as JSON, as Settings reads it back.
    return dict(os.environ) | backing.settings_env(settings)


def _owner_headers(settings: Settings, user_id: int) -> dict[str, str]:
    """A bearer token of the model's owner: deploying needs owner permission."""
    assert settings.secret_key is not None
    token = issue_user_token(settings.secret_key.get_secret_value(), user_id)
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def stack(tmp: Path) -> AsyncIterator[Stack]:
    """Fresh database, the API and a docker worker; torn down on the way out."""
    keep: list[Any] = []
    admin = backing.postgres_admin_dsn(tmp, keep)
    dsn = await backing.create_database(admin, f"greenroom_bench_rollout_{os.getpid()}")
    port, gateway_port = free_port(HOST), free_port(HOST)
    settings = Settings(database_url=dsn, redis_url=backing.redis_url(tmp, keep),
                        secret_key=SecretStr(secrets.token_urlsafe(32)), runtime="docker",
                        docker_image=image.TEST_TAG, state_dir=tmp / "state", api_port=port,
                        gateway_port=gateway_port,
                        log_level="warning", drain_timeout_s=10, stop_grace_s=5,
                        cluster=f"bench-rollout-{os.getpid()}")
    pool = await create_pool(dsn, max_size=4)
    try:
        model = await register(pool, "bench", NAME, ModelSource(backend="hashing",
                                                                dimension=384), "public")
        with stack_processes(_env(settings), tmp):
            api, gateway = f"http://{HOST}:{port}", f"http://{HOST}:{gateway_port}"
            async with aiohttp.ClientSession() as http:
                # A shared machine may take a while to start them (imports, migrations).
                await backing.wait_for_http(http, api + "/healthz", timeout_s=120)
                await backing.wait_for_http(http, gateway + "/healthz", timeout_s=120)
            yield Stack(settings, pool, api, gateway, _owner_headers(settings, model.owner_id),
                        tmp, model.id)
    finally:
        await pool.close()
        await backing.drop_database(admin, dsn)
        for item in keep:
            if isinstance(item, subprocess.Popen):
                item.terminate()


# ---------------------------------------------------------------- rollout


async def _post_task(http: aiohttp.ClientSession, s: Stack, kind: str) -> str:
    async with http.post(f"{s.api}/{kind}", json={"embedding_model_id": f"bench/{NAME}"},
                         headers=s.headers) as resp:
        assert resp.status == 202, await resp.text()
        task_id: str = (await resp.json())["task_id"]
    return task_id


async def _wait_task(http: aiohttp.ClientSession, s: Stack, kind: str, task_id: str) -> None:
    for _ in range(6000):
        async with http.get(f"{s.api}/{kind}/{task_id}", headers=s.headers) as resp:
            task = await resp.json()
        if task["status"] not in ("pending", "processing"):
            assert task["status"] == "done", task
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{kind} task {task_id} did not finish")


async def _first_new_answer(http: aiohttp.ClientSession, s: Stack, old: set[str]) -> None:
    """Return once the gateway answers from a replica not in `old`."""
    url = f"{s.gateway}/serve/{NAME}/embed"
    for _ in range(int(300 / POLL_S)):
        async with http.post(url, json=BODY) as resp:
            await resp.read()
            if resp.status == 200 and resp.headers["X-Greenroom-Replica"] not in old:
                return
        await asyncio.sleep(POLL_S)
    raise TimeoutError("the new generation never answered")


async def _serving_ids(s: Stack) -> set[str]:
    return {str(r.id) for r in await replicas.list_for_model(s.pool, s.model_id)}


@dataclass
class Rollout:
    """One deploy: POST → first new answer, and where the task spent that time."""

    first_answer_s: float
    claim_s: float
    phases: dict[str, float]

    def breakdown(self) -> str:
        steps = {"queued+claimed": self.claim_s} | {
            p: self.phases.get(p, 0.0) for p in ROLLOUT_STEPS}
        steps["gateway swap -> first answer"] = self.first_answer_s - sum(steps.values())
        return ", ".join(f"{k} {v:.2f}" for k, v in steps.items())


async def _task_story(s: Stack, task_id: str, first_answer_s: float) -> Rollout:
    task = await tasks.get(s.pool, UUID(task_id))
    assert task is not None and task.started_at is not None
    claim_s = (task.started_at - task.created_at).total_seconds()
    return Rollout(first_answer_s, claim_s, task.metadata.get("timings", {}))


async def time_rollouts(s: Stack, count: int) -> list[Rollout]:
    """POST /deploy → first embedding from the new generation, for `count` deploys.

    The first is the first deploy (nothing served before); each waits for its task to
    end (drain and removal of the old generation) before the next begins.
    """
    found = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            old = await _serving_ids(s)
            started = time.perf_counter()
            task_id = await _post_task(http, s, "deploy")
            await _first_new_answer(http, s, old)
            first_answer_s = time.perf_counter() - started
            await _wait_task(http, s, "deploy", task_id)
            found.append(await _task_story(s, task_id, first_answer_s))
    return found


@contextlib.asynccontextmanager
async def _probing(s: Stack) -> AsyncIterator[None]:
    """Probe the gateway as `_first_new_answer` does, so the limit runs under the same load."""

    async def probe() -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.post(f"{s.gateway}/serve/{NAME}/embed", json=BODY) as resp:
                    await resp.read()
                await asyncio.sleep(POLL_S)

    task = asyncio.create_task(probe())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def time_raw_starts(s: Stack, count: int) -> list[float]:
    """The limit: the same container started through the Engine until /health is 200.

    Measured while the gateway is probed at the rollout's pace, as the rollouts were.
    """
    runtime = DockerRuntime(s.settings)
    times = []
    try:
        async with aiohttp.ClientSession() as http, _probing(s):
            for _ in range(count):
                spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(),
                                   model_identifier=f"bench/{NAME}", generation=1,
                                   task_id=None, source={"backend": "hashing", "dimension": 384})
                started = time.perf_counter()
                replica = await runtime.start(spec)
                await backing.wait_for_http(http, replica.endpoint + "/health")
                times.append(time.perf_counter() - started)
                await runtime.remove(replica.runtime_ref)
    finally:
        await runtime.close()
    return times


async def time_rollbacks(s: Stack, count: int) -> list[tuple[float, float, float]]:
    """Rollbacks inside the warm window (issue 26), each to the generation the last flip left
    warm: (POST → first answer of that generation, claim → first answer, the worker's
    claim → flipped), in seconds."""
    found = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            deployment = await deployments.get(s.pool, s.model_id)
            assert deployment is not None and deployment.previous_generation is not None, \
                "no warm generation: the deploys ran with keep_previous_s 0"
            target = deployment.previous_generation
            serving = {str(r.id) for r in await replicas.list_for_model(s.pool, s.model_id)
                       if r.generation == deployment.active_generation}
            started = time.perf_counter()
            async with http.post(f"{s.api}/api/v2/deploy/bench/{NAME}/rollback",
                                 json={"generation": target}, headers=s.headers) as resp:
                assert resp.status == 202, await resp.text()
                task_id = (await resp.json())["task_id"]
            await _first_new_answer(http, s, serving)
            first_answer_s = time.perf_counter() - started
            await _wait_task(http, s, "rollback", task_id)
            task = await tasks.get(s.pool, UUID(task_id))
            assert task is not None and task.started_at is not None
            assert task.metadata["mode"] == "flip", task.metadata
            claim_s = (task.started_at - task.created_at).total_seconds()
            found.append((first_answer_s, first_answer_s - claim_s,
                          task.metadata["claim_to_flipped_ms"] / 1000))
    return found


def print_rollbacks(rollbacks: list[tuple[float, float, float]], rollouts: list[Rollout]) -> None:
    """A rollback inside the window against a route flip's own time in the same run: a
    redeploy's time from its replicas healthy to the first answer of the new generation
    (the switch, the publish, the gateway's swap, the first answer)."""
    flips = [r.first_answer_s - r.claim_s - r.phases.get("starting_replicas", 0.0)
             - r.phases.get("health_checking", 0.0) for r in rollouts[1:]]
    flip = _median(flips)
    total = _median([r[0] for r in rollbacks])
    claimed = _median([r[1] for r in rollbacks])
    worker = _median([r[2] for r in rollbacks])
    print(f"rollback inside the warm window, {len(rollbacks)} runs (medians); ratio = "
          "measured / peer or limit")
    print(f"  rollback  claim -> first answer of the warm generation {claimed * 1000:7.1f} ms"
          f"   route flip's own time {flip * 1000:7.1f} ms   ratio {claimed / flip:5.2f}")
    print(f"  rollback  POST -> first answer (queue and claim too)   {total * 1000:7.1f} ms"
          f"   route flip's own time {flip * 1000:7.1f} ms   ratio {total / flip:5.2f}")
    print(f"  rollback  claim -> flipped, in the worker              {worker * 1000:7.1f} ms"
          f"   limit 100 ms   ratio {worker / 0.1:5.2f}")
    print(f"  route flips (redeploys: healthy -> first answer), ms: "
          f"{', '.join(f'{f * 1000:.0f}' for f in flips)}")


# ---------------------------------------------------------------- data plane


@dataclass
class Run:
    latencies: list[float]
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000


async def drive(url: str, requests: int, concurrency: int,
                headers: dict[str, str] | None = None) -> Run:
    """`requests` POSTs of BODY to `url` with `concurrency` in flight; every one must be 200."""
    latencies: list[float] = []
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def client() -> None:
            for _ in counter:
                start = time.perf_counter()
                async with http.post(url, json=BODY) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - start)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return Run(latencies, seconds)


@contextlib.contextmanager
def nginx(upstream: str, tmp: Path) -> Iterator[str]:
    """nginx proxying to `upstream` (host:port); yields its base URL."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise SystemExit("nginx not found: apt-get install -y nginx")
    folder = tmp / "nginx"
    folder.mkdir()
    port = free_port(HOST)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=1, tmp=folder, upstream=upstream, host=HOST,
                                      port=port))
    proc = subprocess.Popen([binary, "-p", str(folder), "-e", str(folder / "error.log"),
                             "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _measure(paths: dict[str, str], requests: int, concurrency: int,
                   headers: dict[str, str]) -> dict[str, Run]:
    """Each path in turn, in ROUNDS rounds, so drift on a shared machine hits all alike."""
    for url in paths.values():
        await drive(url, WARMUP, concurrency, headers)
    runs = {name: Run([], 0.0) for name in paths}
    for _ in range(ROUNDS):
        for name, url in paths.items():
            run = await drive(url, requests // ROUNDS, concurrency, headers)
            runs[name].latencies += run.latencies
            runs[name].seconds += run.seconds
    return runs


async def data_plane(s: Stack, args: argparse.Namespace) -> dict[str, Run]:
    (replica,) = await replicas.list_for_model(s.pool, s.model_id)
    assert replica.endpoint is not None
    upstream = replica.endpoint.removeprefix("http://")
    with nginx(upstream, s.tmp) as proxy:
        async with aiohttp.ClientSession() as http:
            await backing.wait_for_http(http, proxy + "/health")
        paths = {"direct": replica.endpoint + "/embed",
                 "gateway": f"{s.gateway}/serve/{NAME}/embed", "nginx": proxy + "/embed"}
        # What a gateway sends the replica (nginx passes it on; the gateway sends its own).
        assert s.settings.secret_key is not None
        secret = replica_auth.generation_secret(s.settings.secret_key.get_secret_value(),
                                                s.model_id, replica.generation)
        return await _measure(paths, args.requests, args.concurrency,
                              {replica_auth.HEADER: secret})


# ---------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values)


def print_rollout(rollouts: list[Rollout], limits: list[float]) -> None:
    times = [r.first_answer_s for r in rollouts]
    redeploys = times[1:]
    limit = _median(limits)
    median = sorted(rollouts[1:], key=lambda r: r.first_answer_s)[len(redeploys) // 2]
    print(f"rollout, docker runtime, image {image.TEST_TAG} (hashing backend), 1 replica; "
          "ratio = measured / limit")
    print(f"  first deploy   POST /deploy -> first embedding          {times[0]:6.2f} s"
          f"   limit {limit:5.2f} s   ratio {times[0] / limit:5.2f}")
    print(f"  redeploy       POST /deploy -> first embedding, new gen {_median(redeploys):6.2f} s"
          f"   limit {limit:5.2f} s   ratio {_median(redeploys) / limit:5.2f}   (median of "
          f"{len(redeploys)}: {', '.join(f'{t:.2f}' for t in redeploys)})")
    print(f"  limit          container start -> /health 200, same image  median of {len(limits)}:"
          f" {', '.join(f'{t:.2f}' for t in limits)} s")
    print(f"  first deploy, s:    {rollouts[0].breakdown()}")
    print(f"  median redeploy, s: {median.breakdown()}")


def print_data_plane(runs: dict[str, Run], args: argparse.Namespace) -> None:
    direct, nginx_run = runs["direct"], runs["nginx"]
    print(f"data plane, POST /embed to one replica, {args.requests} requests per path in "
          f"{ROUNDS} interleaved rounds, concurrency {args.concurrency}, client on this "
          "machine; ratio = path / reference")
    for name, run in runs.items():
        line = (f"  {name:8} p50 {run.pct(50):6.2f} ms  p99 {run.pct(99):6.2f} ms  "
                f"{run.rate:7.0f} req/s")
        for ref_name, ref in (("direct", direct), ("nginx", nginx_run)):
            if ref is not run and not (name == "direct" and ref_name == "nginx"):
                line += (f"   vs {ref_name}: p50 x{run.pct(50) / ref.pct(50):.2f} "
                         f"p99 x{run.pct(99) / ref.pct(99):.2f} rate x{run.rate / ref.rate:.2f}")
        print(line)


async def _bench(args: argparse.Namespace, tmp: Path) -> None:
    image.build(image.TEST_TAG, with_model=False)
    async with stack(tmp) as s:
        times = await time_rollouts(s, 1 + args.rollouts)
        rollbacks = await time_rollbacks(s, args.rollouts)
        limits = await time_raw_starts(s, args.rollouts)
        runs = None if args.no_data_plane else await data_plane(s, args)
        async with aiohttp.ClientSession() as http:
            await _wait_task(http, s, "delete", await _post_task(http, s, "delete"))
    print_rollout(times, limits)
    print_rollbacks(rollbacks, times)
    if runs is not None:
        print_data_plane(runs, args)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=3, help="redeploys timed")
    parser.add_argument("--requests", type=int, default=3000, help="per data-plane path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-data-plane", action="store_true",
                        help="rollouts and rollbacks only (no nginx needed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        await _bench(args, Path(tmp))


if __name__ == "__main__":
    from schemas.logs import configure_logging

    configure_logging("warning")
    asyncio.run(main())
