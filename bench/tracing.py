"""What tracing costs the gateway (issue 31): p50 and p99 of TEI POST /embed through four
gateway processes routing to one hashing replica, measured in the same run, interleaved:

  before  the gateway of an earlier checkout (`--before DIR`, e.g. a `git archive` of the
          commit this work started from): no request ids, no request log line;
  off     this checkout, OTEL_EXPORTER_OTLP_ENDPOINT unset (the default): traceparent and
          X-Request-Id read and passed on, one `request` log line per request;
  quiet   as `off`, with GREENROOM_GATEWAY_REQUEST_LOG=false (no request log line): what
          the OpenTelemetry-off path itself costs;
  on      this checkout with OTEL_EXPORTER_OTLP_ENDPOINT set (a local OTLP/HTTP sink here
          that answers 200 and counts what it gets): a span per request, batched.

Every gateway logs at the default level (info) to a file, as one deployed would. The client
is aiohttp, closed loop, at concurrency 1 and 16; rounds alternate the gateways so drift on
a shared machine hits all alike. Prints each one's p50 and its ratio to `before`.

    git archive <base-commit> | tar -x -C /tmp/before
    .venv/bin/python bench/tracing.py --before /tmp/before [--requests 1500] [--rounds 4]
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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gateway import HOST, Planes, replica, route  # noqa: E402
from db.pool import create_pool  # noqa: E402
from launch import backing  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

SENTENCE = "a short sentence to embed, as a search query would be"


@contextlib.contextmanager
def gateway_process(code: Path, env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.server"], cwd=code,
                                env=dict(env, PYTHONPATH=str(code)), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.asynccontextmanager
async def otlp_sink() -> AsyncIterator[tuple[str, list[int]]]:
    """A local OTLP/HTTP endpoint: answers 200 to every export; yields its URL and the
    sizes of the exports it got."""
    got: list[int] = []

    async def traces(request: web.Request) -> web.Response:
        got.append(len(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port(HOST)
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield f"http://{HOST}:{port}", got
    finally:
        await runner.cleanup()


async def _closed_loop(http: aiohttp.ClientSession, url: str, requests: int,
                       concurrency: int) -> list[float]:
    latencies: list[float] = []
    left = requests

    async def one_client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            async with http.post(url, json={"inputs": SENTENCE}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"{url}: HTTP {resp.status}")
            latencies.append((time.perf_counter() - started) * 1000.0)

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return latencies


async def _until_200(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        with contextlib.suppress(aiohttp.ClientError):
            async with http.post(url, json={"inputs": "x"}) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never answered 200")


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    keep: list[object] = []
    admin = backing.postgres_admin_dsn(tmp, keep)
    dsn = await backing.create_database(admin, f"greenroom_bench_tracing_{os.getpid()}")
    redis_url = backing.redis_url(tmp, keep)
    base_env = dict(os.environ, GREENROOM_DATABASE_URL=dsn, GREENROOM_REDIS_URL=redis_url,
                    GREENROOM_SECRET_KEY=secrets.token_urlsafe(32),
                    GREENROOM_GATEWAY_HOST=HOST, GREENROOM_LOG_LEVEL="info",
                    OTEL_BSP_SCHEDULE_DELAY="500")
    base_env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    pool = await create_pool(dsn, max_size=2)
    ports = {name: free_port(HOST) for name in ("before", "off", "quiet", "on")}
    try:
        async with otlp_sink() as (sink, exports):
            with contextlib.ExitStack() as stack:
                for name, code in (("before", Path(args.before)), ("off", REPO),
                                   ("quiet", REPO), ("on", REPO)):
                    env = dict(base_env, GREENROOM_GATEWAY_PORT=str(ports[name]))
                    if name == "quiet":
                        env["GREENROOM_GATEWAY_REQUEST_LOG"] = "false"
                    if name == "on":
                        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink
                    stack.enter_context(gateway_process(code, env, tmp / f"gateway-{name}.log"))
                hashing = stack.enter_context(replica(tmp, "hashing", free_port(HOST)))
                async with aiohttp.ClientSession() as http:
                    await backing.wait_for_http(http, hashing + "/health", 60)
                    for port in ports.values():
                        await backing.wait_for_http(http, f"http://{HOST}:{port}/healthz", 60)
                    await route(Planes(f"http://{HOST}:{ports['off']}", pool, redis_url),
                                "hashing", hashing)
                    urls = {n: f"http://{HOST}:{p}/serve/hashing/embed" for n, p in ports.items()}
                    for url in urls.values():
                        await _until_200(http, url)
                        await _closed_loop(http, url, 200, 4)  # warm up
                    for concurrency in (1, 16):
                        await _rounds(http, urls, concurrency, args)
                await asyncio.sleep(1.0)  # the last batch of spans
        lines = sum(1 for line in (tmp / "gateway-off.log").read_text().splitlines()
                    if '"event":"request"' in line.replace(" ", ""))
        print(f"tracing on: the OTLP sink took {len(exports)} exports "
              f"({sum(exports) / 1024:.0f} KiB); the 'off' gateway wrote {lines} request lines")
    finally:
        await pool.close()
        await backing.drop_database(admin, dsn)
        for item in keep:
            if isinstance(item, subprocess.Popen):
                item.terminate()


async def _rounds(http: aiohttp.ClientSession, urls: dict[str, str], concurrency: int,
                  args: argparse.Namespace) -> None:
    found: dict[str, list[float]] = {n: [] for n in urls}
    p50s: dict[str, list[float]] = {n: [] for n in urls}
    for r in range(args.rounds):
        order = list(urls) if r % 2 == 0 else list(reversed(urls))
        for name in order:
            got = await _closed_loop(http, urls[name], args.requests, concurrency)
            found[name] += got
            p50s[name].append(statistics.median(got))
    _report(concurrency, found, p50s, args)


def _report(concurrency: int, found: dict[str, list[float]], p50s: dict[str, list[float]],
            args: argparse.Namespace) -> None:
    print(f"c={concurrency}: {args.rounds} rounds x {args.requests} requests per gateway, "
          f"interleaved; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    # The headline: the median over rounds of each round's p50 (a round another session's
    # burst slowed counts once, not by its requests); then the p50 of all requests pooled.
    before = statistics.median(p50s["before"])
    pooled_before = statistics.median(found["before"])
    for name, latencies in found.items():
        q = statistics.quantiles(latencies, n=100)
        p50 = statistics.median(p50s[name])
        pooled = statistics.median(latencies)
        spread = ", ".join(f"{x:.3f}" for x in p50s[name])
        print(f"  {name:>6}: p50 {p50:7.3f} ms (x{p50 / before:5.3f} of before; pooled "
              f"x{pooled / pooled_before:5.3f})  p99 {q[98]:7.3f} ms   rounds' p50: {spread}")
    # Noise: how far the rounds' p50s of one gateway are from each other.
    noise = max((max(v) - min(v)) / statistics.median(v) for v in p50s.values())
    print(f"  round-to-round spread of p50 (noise): up to {noise:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True,
                        help="a checkout of the code to compare with (its gateway runs)")
    parser.add_argument("--requests", type=int, default=1500, help="per gateway and round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-tracing-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
