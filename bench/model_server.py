"""Throughput of ``python -m model_server`` against the model's own in-process limit.

Starts the real server (all-MiniLM-L6-v2) on 127.0.0.1 and drives it with wrk at 1, 8 and
32 connections, one short sentence per request (closed loop: each connection sends its
next request when the last is answered, so connections = concurrent clients). Around
each round, with the server idle, it measures the in-process batched encode of the same
model (same batch size, same torch threads): the limit. Prints embeddings/s and the
ratio. Bounded: three rounds of four seconds per level; about a minute on two cores.

wrk (C, one thread) is the load generator because it shares the machine's cores with the
server: an aiohttp client in this process cost about as much CPU per request as the
server's own HTTP handling and held the ratio down by itself. Needs ``wrk`` on PATH
(Debian: ``apt-get install wrk``; ``make bench`` installs it).

    .venv/bin/python bench/model_server.py [--batch-size N] [--threads N] [--wait-ms MS]
"""

import argparse
import asyncio
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
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
ROUNDS = {32: 5}  # per concurrency, default 3: the goal's level gets more rounds
ROUND_SECONDS = 4  # wrk's -d: keeps the whole bench near a minute and a half
LIMIT_INPUTS = 256  # the limit encodes sentences(256), the same sentences wrk cycles through
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


def _lua_table(words: list[str]) -> str:
    return "{" + ", ".join(f'"{word}"' for word in words) + "}"


# wrk calls request() for every request; the sentences are those of sentences() above.
WRK_SCRIPT = (
    f"local subjects = {_lua_table(SUBJECTS)}\n"
    f"local verbs = {_lua_table(VERBS)}\n"
    f"local objects = {_lua_table(OBJECTS)}\n"
    f"local LIMIT_INPUTS = {LIMIT_INPUTS}\n"
    + """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local i = 0
request = function()
  local body = string.format('{"inputs": "%s %s %s number %d"}', subjects[i % 6 + 1],
    verbs[math.floor(i / 6) % 6 + 1], objects[math.floor(i / 36) % 4 + 1], i)
  i = (i + 1) % LIMIT_INPUTS
  return wrk.format(nil, "/embed", nil, body)
end
"""
)


@dataclass
class Round:
    """One wrk run: the server's rate, its latency and what the load generator cost."""

    rate: Rate
    p50_ms: float
    client_cores: float  # wrk's CPU seconds per second of the round


async def drive(url: str, script: Path, server_pid: int, concurrency: int) -> Round:
    """``concurrency`` wrk connections for ``ROUND_SECONDS``; any failed request ends the run."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{ROUND_SECONDS}s", "--latency"]
    command += ["-s", str(script), url]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_seconds(server_pid)
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
    output = (await process.communicate())[0].decode()
    server_cpu = cpu_seconds(server_pid) - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    done, seconds = _wrk_total(output)
    if process.returncode != 0 or "Non-2xx" in output or "Socket errors" in output:
        raise SystemExit(f"wrk reported failures:\n{output}")
    return Round(Rate(done / seconds, done / server_cpu), _wrk_p50_ms(output), client_cpu / seconds)


def _wrk_total(output: str) -> tuple[int, float]:
    match = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", output)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match[3]]
    return int(match[1]), float(match[2]) * scale


def _wrk_p50_ms(output: str) -> float:
    match = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    if match is None:
        raise SystemExit(f"cannot read wrk's latency:\n{output}")
    return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]


async def run(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk; make bench does)")
    port = free_port()
    url = f"http://{HOST}:{port}"
    server = start_server(port, args)
    try:
        with tempfile.TemporaryDirectory() as folder:
            script = Path(folder) / "embed.lua"
            script.write_text(WRK_SCRIPT)
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, url)
                await report(session, url, script, server.pid, args)
    finally:
        server.terminate()
        server.wait(timeout=30)


async def report(
    session: aiohttp.ClientSession, url: str, script: Path, pid: int, args: argparse.Namespace
) -> None:
    backend = SentenceTransformerBackend.load(resolve_model_dir(DEFAULT_MODEL), None, args.threads)
    print(
        f"model all-MiniLM-L6-v2; torch threads {args.threads}; cpus {os.cpu_count()}; "
        f"max batch {args.batch_size}; max wait {args.wait_ms} ms; one short sentence per request;"
        f" wrk, 3 rounds of {ROUND_SECONDS} s per level (5 at 32), medians shown"
    )
    await drive(url, script, pid, 8)  # warm the connections and the server
    print(
        f"{'concurrency':>11} {'requests':>8} {'server emb/s':>12} {'limit emb/s':>11}"
        f" {'ratio':>5} {'server emb/cpu-s':>16} {'limit emb/cpu-s':>15} {'ratio':>5}"
        f" {'mean batch':>10} {'limit@batch=c':>13} {'ratio':>5} {'p50 ms':>6} {'wrk cores':>9}"
    )
    for concurrency in args.levels:
        await report_level(session, url, script, pid, concurrency, backend, args.batch_size)
    print(
        "limit: in-process encode of the same model, batches of max batch, same threads, "
        "measured just before and after each round while the server is idle (their mean); "
        "ratio: the median over rounds of server/limit. emb/cpu-s: embeddings per CPU second "
        "of the computing process (server or bench), which other load on the machine skews "
        "less. limit@batch=c: the in-process limit at the largest batch c clients can form, "
        "min(c, max batch). wrk cores: the load generator's CPU use during the round, taken "
        "from the same cores as the server and the limit."
    )


async def report_level(
    session: aiohttp.ClientSession,
    url: str,
    script: Path,
    pid: int,
    concurrency: int,
    backend: SentenceTransformerBackend,
    batch: int,
) -> None:
    """Rounds of limit / server / limit, so a burst of other load skews one round only."""
    own = min(concurrency, batch)
    batches = await batch_stats(session, url)
    rounds: list[tuple[Round, Rate, Rate]] = []
    requests_before = await requests_sent(session, url)
    for _ in range(ROUNDS.get(concurrency, 3)):
        before = await idle_limit(backend, batch)
        served = await drive(url, script, pid, concurrency)
        limit = Rate.mean(before, await idle_limit(backend, batch))
        own_limit = limit if own == batch else await idle_limit(backend, own)
        rounds.append((served, limit, own_limit))
    count, inputs = (b - a for a, b in zip(batches, await batch_stats(session, url), strict=True))
    sent = int(await requests_sent(session, url) - requests_before)
    print(
        f"{concurrency:>11} {sent:>8} {_median(r.rate.wall for r, _, _ in rounds):>12.0f}"
        f" {_median(lim.wall for _, lim, _ in rounds):>11.0f}"
        f" {_median(r.rate.wall / lim.wall for r, lim, _ in rounds):>5.2f}"
        f" {_median(r.rate.cpu for r, _, _ in rounds):>16.0f}"
        f" {_median(lim.cpu for _, lim, _ in rounds):>15.0f}"
        f" {_median(r.rate.cpu / lim.cpu for r, lim, _ in rounds):>5.2f} {inputs / count:>10.1f}"
        f" {_median(own.wall for _, _, own in rounds):>13.0f}"
        f" {_median(r.rate.wall / own.wall for r, _, own in rounds):>5.2f}"
        f" {_median(r.p50_ms for r, _, _ in rounds):>6.1f}"
        f" {_median(r.client_cores for r, _, _ in rounds):>9.2f}"
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
    limit = measure_limit(backend, batch_size, LIMIT_INPUTS)
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
