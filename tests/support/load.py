"""Paced (open-loop) load through a gateway, for the zero-failure redeploy tests."""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

REQUEST_TIMEOUT_S = 10


@dataclass
class Load:
    """What a load run saw: each answer's replica, and every failure in words."""

    replicas: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    # When each answered request was sent (perf_counter), beside its latency.
    starts: list[float] = field(default_factory=list)
    # When each request not answered yet was sent, by its number (read while it runs).
    in_flight: dict[int, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.replicas.values()) + len(self.failures)


async def _one(http: aiohttp.ClientSession, url: str, i: int, load: Load) -> None:
    started = load.in_flight[i] = time.perf_counter()
    try:
        await _answer(http, url, i, load, started)
    finally:
        del load.in_flight[i]


async def _answer(http: aiohttp.ClientSession, url: str, i: int, load: Load,
                  started: float) -> None:
    try:
        async with http.post(url, json={"inputs": f"request number {i}"}) as resp:
            body = await resp.read()
            if resp.status != 200:
                load.failures.append(f"#{i}: HTTP {resp.status} {body[:200]!r}")
                return
            load.replicas[resp.headers.get("X-Greenroom-Replica", "?")] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.failures.append(f"#{i}: {type(exc).__name__}: {exc}")
        return
    load.latencies.append(time.perf_counter() - started)
    load.starts.append(started)


async def run_load(url: str, rate: float, duration_s: float, concurrency: int,
                   timeout_s: float = REQUEST_TIMEOUT_S,
                   stop: asyncio.Event | None = None, into: Load | None = None) -> Load:
    """Send `rate * duration_s` requests, one every 1/rate s, at most `concurrency` at once;
    with `stop`, no more once it is set (`duration_s` is then the longest the load runs):
    a test that needs the load only while something happens ends it when that is over.
    `into` is the Load to fill (a caller may read it while the load runs)."""
    load = Load() if into is None else into
    limit = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def paced(i: int) -> None:
        async with limit:
            await _one(http, url, i, load)

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        start = loop.time()
        pending = []
        for i in range(int(rate * duration_s)):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            if stop is not None and stop.is_set():
                break
            pending.append(asyncio.create_task(paced(i)))
        await asyncio.gather(*pending)
        load.elapsed_s = loop.time() - start
    return load
