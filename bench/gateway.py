"""Data-plane benchmark: one hashing replica, direct vs nginx vs Greenroom's gateway.

Each path is driven by wrk (C, one thread) with TEI POST /embed of one short sentence:
(a) the replica directly, (b) nginx proxying to it with a keepalive upstream (the peer),
(c) `greenroom gateway` (GREENROOM_GATEWAY_PROCESSES processes on one port) routing to
it by deployment name. Concurrency 1, 16 and 64 on the hashing test backend, and 32 on
the real all-MiniLM-L6-v2 replica, where the model's compute dominates and the
gateway's share of throughput is what matters. The paths run in interleaved rounds so
drift on a shared machine hits all alike; every figure is from this one run.

The replica is a `python -m model_server` process, as the process runtime starts it;
the routes are written to a fresh database as a finished rollout leaves them.

    .venv/bin/python bench/gateway.py [--seconds 3] [--rounds 2] [--processes 2] [--no-minilm]
"""

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from db import deployments, replicas  # noqa: E402
from db.pool import create_pool  # noqa: E402
from launch import backing  # noqa: E402
from schemas.models import ModelSource  # noqa: E402
from service.domain.registration import register  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

HOST = "127.0.0.1"
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
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)

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


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def replica(tmp: Path, backend: str, port: int) -> Iterator[str]:
    env = dict(os.environ, MODEL_SERVER_HOST=HOST, MODEL_SERVER_PORT=str(port),
               MODEL_SERVER_BACKEND=backend, MODEL_SERVER_DIMENSION="384",
               MODEL_SERVER_LOG_LEVEL="WARNING")
    with _process([sys.executable, "-m", "model_server"], env, tmp / f"replica-{port}.log"):
        yield f"http://{HOST}:{port}"


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
                   "-g", "daemon off;"], dict(os.environ), folder / "stdout.log"):
        yield f"http://{HOST}:{port}"


@contextlib.asynccontextmanager
async def gateway(tmp: Path, processes: int) -> AsyncIterator[tuple[str, Any]]:
    """A fresh database and Redis, and a gateway; yields its URL and the database pool."""
    keep: list[Any] = []
    admin = backing.postgres_admin_dsn(tmp, keep)
    dsn = await backing.create_database(admin, f"greenroom_bench_gateway_{os.getpid()}")
    port = free_port(HOST)
    env = dict(os.environ, GREENROOM_DATABASE_URL=dsn,
               GREENROOM_REDIS_URL=backing.redis_url(tmp, keep),
               GREENROOM_SECRET_KEY=secrets.token_urlsafe(32), GREENROOM_GATEWAY_HOST=HOST,
               GREENROOM_GATEWAY_PORT=str(port), GREENROOM_GATEWAY_PROCESSES=str(processes),
               GREENROOM_LOG_LEVEL="warning", GREENROOM_ROUTES_POLL_S="0.5")
    pool = await create_pool(dsn, max_size=2)
    try:
        with _process([sys.executable, "-m", "gateway.server"], env,
                      tmp / "gateway.log"):
            base = f"http://{HOST}:{port}"
            async with aiohttp.ClientSession() as http:
                await backing.wait_for_http(http, base + "/healthz")
            yield base, pool
    finally:
        await pool.close()
        await backing.drop_database(admin, dsn)
        for item in keep:
            if isinstance(item, subprocess.Popen):
                item.terminate()


async def route(pool: Any, name: str, endpoint: str) -> None:
    """Serve deployment `name` from `endpoint`, as a finished rollout leaves it."""
    model = await register(pool, "bench", name, ModelSource(backend="hashing", dimension=384),
                           "public")
    _, generation = await deployments.begin_generation(pool, model.id, name)
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model.id,
                          generation=generation, task_id=None, runtime="process")
    await replicas.set_started(pool, replica_id, "bench", endpoint)
    await deployments.switch(pool, model.id, generation, name, {})


async def _until_routed(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.post(url, json={"inputs": "x"}) as resp:
                if resp.status == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never answered 200")


def measure(paths: dict[str, str], levels: list[int], seconds: float, rounds: int,
            script: Path) -> dict[tuple[str, int], Run]:
    runs: dict[tuple[str, int], Run] = {}
    for url in paths.values():
        wrk(url, max(levels), 2, script, warm_up=True)  # connections, caches, batch sizes
    for _ in range(rounds):
        for level in levels:
            for name, url in paths.items():
                requests, elapsed, p50, p99 = wrk(url, level, seconds, script)
                run = runs.setdefault((name, level), Run())
                run.requests += requests
                run.seconds += elapsed
                run.p50.append(p50)
                run.p99.append(p99)
    return runs


# ---------------------------------------------------------------- report


def report(title: str, runs: dict[tuple[str, int], Run], levels: list[int]) -> None:
    print(title)
    for level in levels:
        direct, peer, ours = (runs[(n, level)] for n in ("direct", "nginx", "gateway"))
        for name, run in (("direct", direct), ("nginx", peer), ("gateway", ours)):
            print(f"  c={level:<3} {name:8} {run.rate:8.0f} req/s   p50 {run.p50_ms:6.2f} ms"
                  f"   p99 {run.p99_ms:6.2f} ms")
        print(f"  c={level:<3} gateway/nginx throughput {ours.rate / peer.rate:5.2f} "
              f"(goal >= 1.00)   gateway/direct {ours.rate / direct.rate:5.2f}   "
              f"p50 added over direct {ours.p50_ms - direct.p50_ms:+.2f} ms "
              f"(nginx {peer.p50_ms - direct.p50_ms:+.2f} ms)")


async def _bench(args: argparse.Namespace, tmp: Path) -> None:
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT.format(sentence=SENTENCE))
    async with gateway(tmp, args.processes) as (base, pool):
        with replica(tmp, "hashing", free_port(HOST)) as hashing:
            async with aiohttp.ClientSession() as http:
                await backing.wait_for_http(http, hashing + "/health", 60)
            await route(pool, "hashing", hashing)
            await _until_routed(f"{base}/serve/hashing/embed")
            upstream = hashing.removeprefix("http://")
            with nginx(upstream, tmp, args.processes) as proxy:
                paths = {"direct": hashing + "/embed", "nginx": proxy + "/embed",
                         "gateway": f"{base}/serve/hashing/embed"}
                levels = [1, 16, 64]
                runs = measure(paths, levels, args.seconds, args.rounds, script)
        report(f"data plane, hashing replica (process), TEI POST /embed, wrk -t1, "
               f"{args.rounds} x {args.seconds:g} s per path and level, interleaved; "
               f"gateway processes {args.processes}, nginx workers {args.processes}",
               runs, levels)
        if args.no_minilm:
            return
        with replica(tmp, "sentence-transformers", free_port(HOST)) as minilm:
            async with aiohttp.ClientSession() as http:
                await backing.wait_for_http(http, minilm + "/health", 300)
            await route(pool, "minilm", minilm)
            await _until_routed(f"{base}/serve/minilm/embed")
            with nginx(minilm.removeprefix("http://"), tmp, args.processes) as proxy:
                paths = {"direct": minilm + "/embed", "nginx": proxy + "/embed",
                         "gateway": f"{base}/serve/minilm/embed"}
                runs = measure(paths, [32], args.seconds * 2, args.rounds, script)
        report("data plane, all-MiniLM-L6-v2 replica (process), c=32", runs, [32])
        direct, ours = runs[("direct", 32)], runs[("gateway", 32)]
        print(f"  gateway's share of throughput: {1 - ours.rate / direct.rate:6.1%} "
              "(goal <= 3 %)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1,
                        help="gateway processes (and nginx workers)")
    parser.add_argument("--no-minilm", action="store_true", help="skip the real-model part")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        await _bench(args, Path(tmp))


if __name__ == "__main__":
    from schemas.logs import configure_logging

    configure_logging("warning")
    asyncio.run(main())
