"""Data-plane benchmark: one hashing replica, direct vs nginx vs Greenroom's data planes.

Each path is driven by wrk (C, one thread) with TEI POST /embed of one short sentence:
(a) the replica directly, (b) nginx proxying to it with a keepalive upstream (the peer),
(c) `greenroom gateway` (GREENROOM_GATEWAY_PROCESSES processes on one port) routing to
it by deployment name, (d) `greenroom gateway --engine haproxy` (HAProxy programmed by
Greenroom, `--processes` threads; skipped when haproxy is not installed). Concurrency
1, 16 and 64 on the hashing test backend, and 32 on the real all-MiniLM-L6-v2 replica
(the default deployment's ONNX export on one compute thread; `--minilm-backend`,
`--minilm-threads`), where the model's compute dominates and the gateway's share of
throughput is what matters. The paths run in interleaved rounds so
drift on a shared machine hits all alike; every figure is from this one run. `--before
DIR` (a checkout of an earlier commit: `git archive <commit> | tar -x -C DIR`) adds that
checkout's Python gateway as the path `before`, for a before/after in the same rounds.

The replica is a `python -m model_server` process, as the process runtime starts it;
the routes are written to a fresh database as a finished rollout leaves them.

    .venv/bin/python bench/gateway.py [--seconds 3] [--rounds 2] [--processes 2] [--no-minilm]
        [--no-haproxy] [--no-hashing] [--minilm-backend onnx|sentence-transformers]
        [--before DIR]
        [--minilm-threads N] [--minilm-rounds N]
"""

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import describe  # noqa: E402
from db import deployments, replicas  # noqa: E402
from db.pool import create_pool  # noqa: E402
from gateway.haproxy.controller import find_haproxy  # noqa: E402
from launch import backing  # noqa: E402
from schemas.models import ModelSource  # noqa: E402
from schemas.queue import ROUTES_CHANNEL, RoutesChanged  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from service.domain.registration import register  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

HOST = "127.0.0.1"
# ONNX exports are made once and reused (bench/model_server.py's cache).
EXPORT_DIR = REPO / ".greenroom" / "bench-exports"
SENTENCE = "a short sentence to embed, as a search query would be"
NGINX_CONF = """worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream replica {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{{"inputs": "{sentence}"}}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class Run:
    """wrk's figures for one path at one concurrency, summed over rounds."""

    requests: int = 0
    seconds: float = 0.0
    rates: list[float] = field(default_factory=list)  # each round's, in order
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    proxy_cpu_s: float = 0.0  # the proxy's process tree (none for the direct path)
    replica_cpu_s: float = 0.0
    # HAProxy's own processes, in the haproxy path's tree (the rest of it is the
    # controller and the idle Python gateway behind it: their work is per second).
    haproxy_cpu_s: float = 0.0

    def per_request_us(self, seconds: float) -> float:
        return seconds / self.requests * 1e6 if self.requests else 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return sorted(self.p50)[len(self.p50) // 2]

    @property
    def p99_ms(self) -> float:
        return max(self.p99)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, concurrency: int, seconds: float, script: Path,
        warm_up: bool = False) -> tuple[int, float, float, float]:
    """(requests, seconds, p50 ms, p99 ms) of one wrk run; any non-2xx answer, any socket
    error or a request slower than 30 s fails it (outside the warm-up)."""
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency",
                          "--timeout", "30s", "-s", str(script), url], capture_output=True,
                         text=True, check=True, timeout=seconds + 60).stdout
    if warm_up:
        return 0, 0.0, 0.0, 0.0
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw failures on {url}:\n{out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    assert done and p50 and p99, out
    elapsed = float(done.group(2)) * _UNITS[done.group(3)] / 1000
    return int(done.group(1)), elapsed, _ms(p50.group(1)), _ms(p99.group(1))


# ---------------------------------------------------------------- processes


# Base URL → pid of the process whose tree serves it (the replica, nginx, a gateway), for
# the CPU each path spends per request.
PIDS: dict[str, int] = {}
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int, only: str | None = None) -> float:
    """CPU seconds (user + system) used so far by `pid` and every process below it (with
    `only`, by those of them whose command name is `only`)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        child = int(stat.parent.name)
        parents[child], names[child] = int(fields[1]), head.partition("(")[2]
        used[child] = (int(fields[11]) + int(fields[12])) * _TICK_S
    tree = {pid}
    for child in sorted(parents):  # a child's pid is almost always above its parent's
        if parents[child] in tree:
            tree.add(child)
    return sum(used.get(m, 0.0) for m in tree if only is None or names.get(m) == only)


def _owner(url: str) -> int | None:
    bases = [b for b in PIDS if url.startswith(b + "/")]
    return PIDS[max(bases, key=len)] if bases else None


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path,
             base: str | None = None, cwd: Path = REPO) -> Iterator[None]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if base:
        PIDS[base] = proc.pid
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def replica(tmp: Path, backend: str, port: int, threads: int | None = None) -> Iterator[str]:
    env = dict(os.environ, MODEL_SERVER_HOST=HOST, MODEL_SERVER_PORT=str(port),
               MODEL_SERVER_BACKEND=backend, MODEL_SERVER_DIMENSION="384",
               MODEL_SERVER_LOG_LEVEL="WARNING", MODEL_SERVER_EXPORT_DIR=str(EXPORT_DIR))
    if threads is not None:
        env["MODEL_SERVER_NUM_THREADS"] = str(threads)
    base = f"http://{HOST}:{port}"
    with _process([sys.executable, "-m", "model_server"], env, tmp / f"replica-{port}.log",
                  base):
        yield base


@contextlib.contextmanager
def nginx(upstream: str, tmp: Path, workers: int) -> Iterator[str]:
    """nginx proxying to `upstream` (host:port); yields its base URL."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise SystemExit("nginx not found: apt-get install -y nginx")
    folder = tmp / f"nginx-{upstream.replace(':', '-')}"
    folder.mkdir()
    port = free_port(HOST)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=folder, upstream=upstream, host=HOST, port=port,
                                      workers=workers))
    with _process([binary, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf),
                   "-g", "daemon off;"], dict(os.environ), folder / "stdout.log",
                  f"http://{HOST}:{port}"):
        yield f"http://{HOST}:{port}"


@dataclass
class Planes:
    """Greenroom's data planes under test, and the database their routes come from."""

    gateway: str
    pool: Any
    redis_url: str
    haproxy: str | None = None
    haproxy_stats: str | None = None
    before: str | None = None  # an earlier checkout's Python gateway (`--before`)


@contextlib.asynccontextmanager
async def gateway(tmp: Path, processes: int, with_haproxy: bool,
                  before: Path | None = None) -> AsyncIterator[Planes]:
    """A fresh database and Redis, a Python gateway and (`with_haproxy`) an HAProxy one;
    with `before` (a checkout's folder), that checkout's Python gateway beside them."""
    keep: list[Any] = []
    admin = backing.postgres_admin_dsn(tmp, keep)
    dsn = await backing.create_database(admin, f"greenroom_bench_gateway_{os.getpid()}")
    port = free_port(HOST)
    redis_url = backing.redis_url(tmp, keep)
    # Default settings otherwise (the routes fallback poll too): `route` announces each
    # change as a rollout's switch does.
    env = dict(os.environ, GREENROOM_DATABASE_URL=dsn, GREENROOM_REDIS_URL=redis_url,
               GREENROOM_SECRET_KEY=secrets.token_urlsafe(32), GREENROOM_GATEWAY_HOST=HOST,
               GREENROOM_GATEWAY_PORT=str(port), GREENROOM_GATEWAY_PROCESSES=str(processes),
               GREENROOM_LOG_LEVEL="warning")
    pool = await create_pool(dsn, max_size=2)
    hport, stats = free_port(HOST), free_port(HOST)
    # HAProxy gets `processes` threads; the Python gateway behind it (private models and
    # the like) is not on the measured path, so one process.
    henv = dict(env, GREENROOM_GATEWAY_ENGINE="haproxy", GREENROOM_GATEWAY_PORT=str(hport),
                GREENROOM_GATEWAY_PROCESSES="1", GREENROOM_HAPROXY_THREADS=str(processes),
                GREENROOM_HAPROXY_STATS_PORT=str(stats), GREENROOM_HAPROXY_SLOTS="4",
                GREENROOM_STATE_DIR=str(tmp / "state"))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_process([sys.executable, "-m", "gateway.server"], env,
                                         tmp / "gateway.log", f"http://{HOST}:{port}"))
            planes = Planes(f"http://{HOST}:{port}", pool, redis_url)
            if before is not None:
                bport = free_port(HOST)
                planes.before = f"http://{HOST}:{bport}"
                stack.enter_context(_process(
                    [sys.executable, "-m", "gateway.server"],
                    dict(env, GREENROOM_GATEWAY_PORT=str(bport), PYTHONPATH=str(before)),
                    tmp / "before.log", planes.before, cwd=before))
            if with_haproxy:
                stack.enter_context(_process([sys.executable, "-m", "gateway.server"], henv,
                                             tmp / "haproxy.log", f"http://{HOST}:{hport}"))
                planes.haproxy = f"http://{HOST}:{hport}"
                planes.haproxy_stats = f"http://{HOST}:{stats}"
            async with aiohttp.ClientSession() as http:
                await backing.wait_for_http(http, planes.gateway + "/healthz")
                if planes.before:
                    await backing.wait_for_http(http, planes.before + "/healthz")
                if planes.haproxy:
                    await backing.wait_for_http(http, planes.haproxy + "/healthz")
            yield planes
    finally:
        await pool.close()
        await backing.drop_database(admin, dsn)
        for item in keep:
            if isinstance(item, subprocess.Popen):
                item.terminate()


async def route(planes: Planes, name: str, endpoint: str) -> UUID:
    """Serve deployment `name` from `endpoint`, as a finished rollout leaves it, and announce
    it on the routes channel as the rollout's switch does; returns the replica's id."""
    pool = planes.pool
    model = await register(pool, "bench", name, ModelSource(backend="hashing", dimension=384),
                           "public")
    _, generation = await deployments.begin_generation(pool, model.id, name)
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model.id,
                          generation=generation, task_id=None, runtime="process")
    await replicas.set_started(pool, replica_id, "bench", endpoint)
    await deployments.switch(pool, model.id, generation, name, {})
    redis = Redis.from_url(planes.redis_url)
    try:
        await redis.publish(ROUTES_CHANNEL, RoutesChanged(model.id).encode())
    finally:
        await redis.aclose()
    return replica_id


async def _until_routed(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.post(url, json={"inputs": "x"}) as resp:
                if resp.status == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never answered 200")


async def _until_direct(planes: Planes, count: int) -> None:
    """Until HAProxy serves `count` replicas from its slots (so /serve goes straight to
    them): servers of a slot leave maintenance ("no check": no health checks) when given
    to a replica."""
    if planes.haproxy_stats is None:
        return
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(planes.haproxy_stats + "/stats;csv") as resp:
                rows = [row.split(",") for row in (await resp.text()).splitlines()]
            if sum(row[0].startswith("slot") and row[17] == "no check" for row in rows) >= count:
                return
            await asyncio.sleep(0.1)
    raise SystemExit(f"HAProxy never served {count} replica(s) directly")


def _paths(planes: Planes, direct: str, proxy: str, name: str) -> dict[str, str]:
    paths = {"direct": direct + "/embed", "nginx": proxy + "/embed",
             "gateway": f"{planes.gateway}/serve/{name}/embed"}
    if planes.before:
        paths["before"] = f"{planes.before}/serve/{name}/embed"
    if planes.haproxy:
        paths["haproxy"] = f"{planes.haproxy}/serve/{name}/embed"
    return paths


def measure(paths: dict[str, str], levels: list[int], seconds: float, rounds: int,
            script: Path) -> dict[tuple[str, int], Run]:
    runs: dict[tuple[str, int], Run] = {}
    for url in paths.values():
        wrk(url, max(levels), 2, script, warm_up=True)  # connections, caches, batch sizes
    replica_pid = _owner(paths["direct"])
    for _ in range(rounds):
        for level in levels:
            for name, url in paths.items():
                proxy_pid = _owner(url) if name != "direct" else None
                before = _cpu(proxy_pid, replica_pid)
                requests, elapsed, p50, p99 = wrk(url, level, seconds, script)
                after = _cpu(proxy_pid, replica_pid)
                run = runs.setdefault((name, level), Run())
                run.requests += requests
                run.seconds += elapsed
                run.rates.append(requests / elapsed if elapsed else 0.0)
                run.p50.append(p50)
                run.p99.append(p99)
                run.proxy_cpu_s += after[0] - before[0]
                run.replica_cpu_s += after[1] - before[1]
                run.haproxy_cpu_s += after[2] - before[2]
    return runs


def _cpu(proxy_pid: int | None, replica_pid: int | None) -> tuple[float, float, float]:
    """CPU so far of the proxy's tree, the replica, and the HAProxy processes in the tree."""
    return (cpu_s(proxy_pid) if proxy_pid else 0.0, cpu_s(replica_pid) if replica_pid else 0.0,
            cpu_s(proxy_pid, "haproxy") if proxy_pid else 0.0)


# ---------------------------------------------------------------- report


def report(title: str, runs: dict[tuple[str, int], Run], levels: list[int]) -> None:
    print(title)
    planes = [n for n in ("before", "gateway", "haproxy") if (n, levels[0]) in runs]
    for level in levels:
        direct, peer = runs[("direct", level)], runs[("nginx", level)]
        for name in ("direct", "nginx", *planes):
            run = runs[(name, level)]
            print(f"  c={level:<3} {name:8} {run.rate:8.0f} req/s   p50 {run.p50_ms:6.2f} ms"
                  f"   p99 {run.p99_ms:6.2f} ms   CPU/request: proxy "
                  f"{run.per_request_us(run.proxy_cpu_s):5.0f} us, replica "
                  f"{run.per_request_us(run.replica_cpu_s):5.0f} us" +
                  (f" (HAProxy itself {run.per_request_us(run.haproxy_cpu_s):.0f} us)"
                   if name == "haproxy" else ""))
        for name in planes:
            ours = runs[(name, level)]
            print(f"  c={level:<3} {name}/nginx throughput {ours.rate / peer.rate:5.2f} "
                  f"(goal >= 1.00)   {name}/direct {ours.rate / direct.rate:5.2f}   "
                  f"p50 added over direct {ours.p50_ms - direct.p50_ms:+.2f} ms "
                  f"(nginx {peer.p50_ms - direct.p50_ms:+.2f} ms)")


async def _bench(args: argparse.Namespace, tmp: Path) -> None:
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT.format(sentence=SENTENCE))
    with_haproxy = not args.no_haproxy and find_haproxy(Settings()) is not None
    if not with_haproxy:
        print("haproxy: not measured (--no-haproxy, or haproxy is not installed)")
    async with gateway(tmp, args.processes, with_haproxy, args.before) as planes:
        if not args.no_hashing:
            await _hashing(args, tmp, planes, script)
        if args.no_minilm:
            return
        await _minilm(args, tmp, planes, script)


async def _hashing(args: argparse.Namespace, tmp: Path, planes: Planes, script: Path) -> None:
    with replica(tmp, "hashing", free_port(HOST)) as hashing:
        async with aiohttp.ClientSession() as http:
            await backing.wait_for_http(http, hashing + "/health", 60)
        await route(planes, "hashing", hashing)
        await _until_routed(f"{planes.gateway}/serve/hashing/embed")
        if planes.before:
            await _until_routed(f"{planes.before}/serve/hashing/embed")
        await _until_direct(planes, 1)
        with nginx(hashing.removeprefix("http://"), tmp, args.processes) as proxy:
            levels = [1, 16, 64]
            runs = measure(_paths(planes, hashing, proxy, "hashing"), levels, args.seconds,
                           args.rounds, script)
    report(f"data plane, hashing replica (process), TEI POST /embed, wrk -t1, "
           f"{args.rounds} x {args.seconds:g} s per path and level, interleaved; "
           f"gateway processes {args.processes}, nginx workers {args.processes}, "
           f"haproxy threads {args.processes}; load average {_load()}", runs, levels)


async def _minilm(args: argparse.Namespace, tmp: Path, planes: Planes, script: Path) -> None:
    with replica(tmp, args.minilm_backend, free_port(HOST),
                 args.minilm_threads or None) as minilm:
        async with aiohttp.ClientSession() as http:
            await backing.wait_for_http(http, minilm + "/health", 600)
        await route(planes, "minilm", minilm)
        await _until_routed(f"{planes.gateway}/serve/minilm/embed")
        if planes.before:
            await _until_routed(f"{planes.before}/serve/minilm/embed")
        await _until_direct(planes, 1 if args.no_hashing else 2)
        with nginx(minilm.removeprefix("http://"), tmp, args.processes) as proxy:
            runs = measure(_paths(planes, minilm, proxy, "minilm"), [32], args.seconds * 2,
                           args.minilm_rounds or args.rounds, script)
    report(f"data plane, all-MiniLM-L6-v2 replica (process, {args.minilm_backend}, "
           f"{args.minilm_threads or 'default'} threads), c=32; {describe()}", runs, [32])
    direct = runs[("direct", 32)]
    for name in ("nginx", "before", "gateway", "haproxy"):
        if (name, 32) not in runs:
            continue
        run = runs[(name, 32)]
        # Where the proxy and the replica share the cores, the proxy's CPU per request
        # over the pair's is the throughput it takes; steadier than rates on a busy host.
        proxy_s = run.haproxy_cpu_s if name == "haproxy" else run.proxy_cpu_s
        cpu_share = proxy_s / (proxy_s + run.replica_cpu_s) if run.replica_cpu_s else 0.0
        # Each round's share against the direct path's run just before it: a drift of the
        # machine's speed across the rounds (other sessions' load) cancels out.
        shares = sorted(1 - ours / theirs for ours, theirs in zip(run.rates, direct.rates,
                                                                     strict=True) if theirs)
        print(f"  {name}'s share of throughput: {1 - run.rate / direct.rate:6.1%} "
              f"(goal <= 3 %); its share of CPU per request: {cpu_share:5.1%}; "
              f"round by round: median {statistics.median(shares):.1%}, "
              f"{shares[0]:.1%} to {shares[-1]:.1%} over {len(shares)} rounds")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1,
                        help="gateway processes (and nginx workers)")
    parser.add_argument("--no-minilm", action="store_true", help="skip the real-model part")
    parser.add_argument("--no-haproxy", action="store_true", help="skip the HAProxy data plane")
    parser.add_argument("--no-hashing", action="store_true", help="skip the hashing replica")
    parser.add_argument("--before", type=Path,
                        help="an earlier checkout's folder: its Python gateway is measured "
                             "too (`before`), in the same interleaved rounds")
    parser.add_argument("--minilm-backend", default="onnx",
                        choices=["onnx", "sentence-transformers"],
                        help="the real replica's backend (onnx: the default deployment's)")
    parser.add_argument("--minilm-threads", type=int, default=1,
                        help="the real replica's compute threads (0: its default, a thread "
                             "per CPU, which wait on each other on busy shared cores)")
    parser.add_argument("--minilm-rounds", type=int, default=0,
                        help="rounds of the real-model part (0: --rounds)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        await _bench(args, Path(tmp))


if __name__ == "__main__":
    from schemas.logs import configure_logging

    configure_logging("warning")
    asyncio.run(main())
