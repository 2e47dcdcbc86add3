"""Throughput of ``python -m model_server`` against the model's own in-process limit.

Starts the real server (all-MiniLM-L6-v2) on 127.0.0.1, measures the in-process batched
encode of the same model (same batch size, same torch threads) while the server is idle,
then drives the server with 1, 8 and 32 concurrent clients sending one short sentence per
request. Prints embeddings/s and the ratio to the limit. Bounded: per level, three rounds
of at most a fixed number of requests or four seconds; about a minute on two cores.

    .venv/bin/python bench/model_server.py [--batch-size N] [--threads N] [--wait-ms MS]
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[1]
# This script is itself named model_server.py: the repository root must come first so
# that `import model_server` finds the package, not this file.
sys.path.insert(0, str(REPO_ROOT))

from model_server.backends import SentenceTransformerBackend, resolve_model_dir  # noqa: E402
from model_server.config import DEFAULT_MODEL, Settings  # noqa: E402

HOST = "127.0.0.1"
REQUESTS = {1: 50, 8: 200, 32: 400}  # concurrency: requests sent per round
ROUNDS = 3
ROUND_SECONDS = 4.0  # keeps the whole bench near a minute even on a loaded machine
SUBJECTS = ["the cat", "a search engine", "our team", "the river", "this model", "my friend"]
VERBS = ["likes", "indexes", "ships", "crosses", "embeds", "reads"]
OBJECTS = ["short sentences", "the old bridge", "every document", "a new release"]


def sentences(count: int) -> list[str]:
    return [
        f"{SUBJECTS[i % 6]} {VERBS[i // 6 % 6]} {OBJECTS[i // 36 % 4]} number {i}"
        for i in range(count)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "PYTHONPATH": str(REPO_ROOT),
        "MODEL_SERVER_PORT": str(port),
        "MODEL_SERVER_HOST": HOST,
        "MODEL_SERVER_NUM_THREADS": str(args.threads),
        "MODEL_SERVER_MAX_BATCH_SIZE": str(args.batch_size),
        "MODEL_SERVER_MAX_BATCH_WAIT_MS": str(args.wait_ms),
        "MODEL_SERVER_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "model_server"]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env)


async def wait_healthy(session: aiohttp.ClientSession, url: str, within_s: float = 120) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the server never became healthy")


@dataclass
class Rate:
    """Embeddings per wall-clock second and per CPU second of the computing process."""

    wall: float
    cpu: float

    @classmethod
    def mean(cls, a: "Rate", b: "Rate") -> "Rate":
        return cls((a.wall + b.wall) / 2, (a.cpu + b.cpu) / 2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_limit(backend: SentenceTransformerBackend, batch_size: int, count: int) -> Rate:
    """In-process embeddings/s: the model alone, batches of ``batch_size``."""
    texts = sentences(count)
    backend.embed(texts[:batch_size])
    started, cpu = time.perf_counter(), cpu_seconds(os.getpid())
    for start in range(0, count, batch_size):
        backend.embed(texts[start : start + batch_size])
    return Rate(count / (time.perf_counter() - started), count / (cpu_seconds(os.getpid()) - cpu))


async def drive(
    session: aiohttp.ClientSession, url: str, server_pid: int, concurrency: int, total: int
) -> Rate:
    """Closed loop: ``concurrency`` clients, one sentence per request, ``total`` requests
    or ``ROUND_SECONDS``, whichever comes first."""
    texts = sentences(total)
    cursor = iter(range(total))
    done = 0
    deadline = time.monotonic() + ROUND_SECONDS

    async def client() -> None:
        nonlocal done
        for index in cursor:
            if time.monotonic() > deadline:
                return
            async with session.post(f"{url}/embed", json={"inputs": texts[index]}) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"request failed: {response.status}")
            done += 1

    started, cpu = time.perf_counter(), cpu_seconds(server_pid)
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Rate(done / (time.perf_counter() - started), done / (cpu_seconds(server_pid) - cpu))


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://{HOST}:{port}"
    server = start_server(port, args)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_healthy(session, url)
            await report(session, url, server.pid, args)
    finally:
        server.terminate()
        server.wait(timeout=30)


async def report(
    session: aiohttp.ClientSession, url: str, pid: int, args: argparse.Namespace
) -> None:
    backend = SentenceTransformerBackend.load(resolve_model_dir(DEFAULT_MODEL), None, args.threads)
    print(
        f"model all-MiniLM-L6-v2; torch threads {args.threads}; cpus {os.cpu_count()}; "
        f"max batch {args.batch_size}; max wait {args.wait_ms} ms; one short sentence per request;"
        f" {ROUNDS} rounds per level, medians shown"
    )
    await drive(session, url, pid, 8, 64)  # warm the connections and the server
    print(
        f"{'concurrency':>11} {'requests':>8} {'server emb/s':>12} {'limit emb/s':>11}"
        f" {'ratio':>5} {'server emb/cpu-s':>16} {'limit emb/cpu-s':>15} {'ratio':>5}"
        f" {'mean batch':>10} {'limit@batch=c':>13} {'ratio':>5}"
    )
    for concurrency in args.levels:
        await report_level(session, url, pid, concurrency, backend, args.batch_size)
    print(
        "limit: in-process encode of the same model, batches of max batch, same threads, "
        "measured just before and after each round while the server is idle (their mean); "
        "ratio: the median over rounds of server/limit. emb/cpu-s: embeddings per CPU second "
        "of the computing process (server or bench), which other load on the machine skews "
        "less. limit@batch=c: the in-process limit at the largest batch c clients can form, "
        "min(c, max batch)."
    )


async def report_level(
    session: aiohttp.ClientSession,
    url: str,
    pid: int,
    concurrency: int,
    backend: SentenceTransformerBackend,
    batch: int,
) -> None:
    """Rounds of limit / server / limit, so a burst of other load skews one round only."""
    own = min(concurrency, batch)
    total = REQUESTS.get(concurrency, 400)
    batches = await batch_stats(session, url)
    rounds: list[tuple[Rate, Rate, Rate]] = []
    requests_before = await requests_sent(session, url)
    for _ in range(ROUNDS):
        before = await idle_limit(backend, batch)
        rate = await drive(session, url, pid, concurrency, total)
        limit = Rate.mean(before, await idle_limit(backend, batch))
        own_limit = limit if own == batch else await idle_limit(backend, own)
        rounds.append((rate, limit, own_limit))
    count, inputs = (b - a for a, b in zip(batches, await batch_stats(session, url), strict=True))
    sent = int(await requests_sent(session, url) - requests_before)
    print(
        f"{concurrency:>11} {sent:>8} {_median(r.wall for r, _, _ in rounds):>12.0f}"
        f" {_median(lim.wall for _, lim, _ in rounds):>11.0f}"
        f" {_median(r.wall / lim.wall for r, lim, _ in rounds):>5.2f}"
        f" {_median(r.cpu for r, _, _ in rounds):>16.0f}"
        f" {_median(lim.cpu for _, lim, _ in rounds):>15.0f}"
        f" {_median(r.cpu / lim.cpu for r, lim, _ in rounds):>5.2f} {inputs / count:>10.1f}"
        f" {_median(own.wall for _, _, own in rounds):>13.0f}"
        f" {_median(r.wall / own.wall for r, _, own in rounds):>5.2f}"
    )


def _median(values: Iterable[float]) -> float:
    return statistics.median(values)


async def batch_stats(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """The server's batch count and batched inputs so far, from /metrics."""
    async with session.get(f"{url}/metrics") as response:
        lines = (await response.text()).splitlines()
    values = dict(
        line.rsplit(" ", 1) for line in lines if line.startswith("model_server_batch_size_")
    )
    return float(values["model_server_batch_size_count"]), float(
        values["model_server_batch_size_sum"]
    )


async def requests_sent(session: aiohttp.ClientSession, url: str) -> float:
    """Successful /embed requests so far, from /metrics."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    prefix = 'model_server_requests_total{route="/embed",status="200"} '
    return sum(
        float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)
    )


async def idle_limit(backend: SentenceTransformerBackend, batch_size: int) -> Rate:
    """The limit, with a pause so neither process's idle threads still spin."""
    await asyncio.sleep(0.3)
    limit = measure_limit(backend, batch_size, max(32, 4 * batch_size))
    await asyncio.sleep(0.3)
    return limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = Settings()  # the server's own defaults, unless MODEL_SERVER_* say otherwise
    parser.add_argument("--batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--threads", type=int, default=defaults.num_threads)
    parser.add_argument("--wait-ms", type=float, default=defaults.max_batch_wait_ms)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    started = time.perf_counter()
    asyncio.run(run(parser.parse_args()))
    print(f"bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
