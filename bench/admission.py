"""Interactive requests beside bulk ones on one real replica (issue 29), in one run.

Starts the real model server (all-MiniLM-L6-v2, sentence-transformers) on 127.0.0.1 and
measures, in this order:

1. capacity: a bulk client alone keeps ``--queued`` full batches in flight (closed loop,
   ``--queued`` requests of ``max_batch_size`` inputs each): inputs/s, and one full
   batch's compute time (the server's own batch histogram);
2. unloaded: an interactive client alone, one single-sentence request every 50 ms
   (open loop): its p99;
3. lanes: both at once, the bulk client in the batch lane (`X-Greenroom-Priority:
   batch`), the interactive one in the interactive lane;
4. first-come: the same, but the interactive client in the batch lane too, so both
   share one first-come queue, as every request did before lanes;
5. length-formed batches: a mixed-length corpus (``corpus()``: seeded, shipped with this
   file) embedded by a bulk client, by this server (batches computed as token-budgeted
   passes of inputs of similar length) and by a second one whose token budget is too
   large to split anything (one pass per batch, in arrival order, padded to its longest).

Prints each figure against its goal as a ratio:
  interactive p99 (lanes) <= unloaded p99 + 2 x one full batch's compute time;
  0 interactive errors; bulk throughput beside the interactive client >= 0.85 x capacity;
  length-formed >= 1.3 x arrival order; and the first-come p99 beside the lanes' one.

    .venv/bin/python bench/admission.py [--seconds 10] [--queued 16] [--threads N]
"""

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from model_server.lanes import PRIORITY_HEADER  # noqa: E402

HOST = "127.0.0.1"
BATCH = 32
INTERACTIVE_EVERY_S = 0.05
WORDS = ["river", "valley", "farm", "village", "mountain", "city", "station", "harbour",
         "market", "bridge", "road", "field", "forest", "garden", "school", "library",
         "tower", "castle", "island", "lake"]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def corpus(count: int = 512, seed: int = 29) -> list[str]:
    """A mixed-length corpus, the same every run: most chunks short (6-24 words), one in
    eight long (60-200 words, about 60-200 tokens), shuffled, as an ingestion of titles,
    snippets and whole paragraphs is."""
    rng = random.Random(seed)
    texts = [sentence(rng, rng.randint(60, 200) if rng.random() < 0.125
                      else rng.randint(6, 24)) for _ in range(count)]
    rng.shuffle(texts)
    return texts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(port: int, threads: int, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "PYTHONPATH": str(REPO_ROOT), "MODEL_SERVER_PORT": str(port),
        "MODEL_SERVER_HOST": HOST, "MODEL_SERVER_NUM_THREADS": str(threads),
        "MODEL_SERVER_MAX_BATCH_SIZE": str(BATCH), "MODEL_SERVER_LOG_LEVEL": "WARNING",
        "MODEL_SERVER_BACKEND": "sentence-transformers",
    } | extra
    return subprocess.Popen([sys.executable, "-m", "model_server"], cwd=REPO_ROOT, env=env)


async def wait_healthy(session: aiohttp.ClientSession, url: str, within_s: float = 180) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server never became healthy")


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    inputs: int = 0
    errors: int = 0

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def post(session: aiohttp.ClientSession, url: str, texts: list[str], lane: str,
               tally: Tally) -> None:
    started = time.perf_counter()
    async with session.post(f"{url}/embed", json={"inputs": texts},
                            headers={PRIORITY_HEADER: lane}) as response:
        await response.read()
        if response.status != 200:
            tally.errors += 1
            return
    tally.latencies.append(time.perf_counter() - started)
    tally.inputs += len(texts)


async def bulk(session: aiohttp.ClientSession, url: str, queued: int, until: float,
               texts: list[str] | None = None) -> Tally:
    """`queued` closed-loop clients of full batches, in the batch lane, until `until` (or
    through `texts` once, when given)."""
    tally = Tally()
    rng = random.Random(7)
    work = iter(range(0, len(texts), BATCH)) if texts is not None else None

    async def client() -> None:
        while time.monotonic() < until:
            if texts is not None and work is not None:
                start = next(work, None)
                if start is None:
                    return
                batch = texts[start:start + BATCH]
            else:
                batch = [sentence(rng, rng.randint(8, 16)) for _ in range(BATCH)]
            await post(session, url, batch, "batch", tally)

    await asyncio.gather(*(client() for _ in range(queued)))
    return tally


async def interactive(session: aiohttp.ClientSession, url: str, lane: str,
                      until: float) -> Tally:
    """One single-sentence request every 50 ms (open loop: it does not wait for answers)."""
    tally, rng, sent = Tally(), random.Random(3), []
    next_at = time.monotonic()
    while next_at < until:
        sent.append(asyncio.create_task(post(session, url, [sentence(rng, 10)], lane, tally)))
        next_at += INTERACTIVE_EVERY_S
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*sent)
    return tally


async def batch_seconds(session: aiohttp.ClientSession, url: str) -> tuple[float, float, float]:
    """The server's batch compute seconds, batches and inputs batched so far."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()

    def value(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0
    return (value("model_server_batch_duration_seconds_sum"),
            value("model_server_batch_duration_seconds_count"),
            value("model_server_batch_size_sum"))


async def full_batch_s(session: aiohttp.ClientSession, url: str, texts: list[str]) -> float:
    """Median compute time of one full batch of short sentences, the server idle."""
    times = []
    for _ in range(7):
        before = await batch_seconds(session, url)
        async with session.post(f"{url}/embed", json={"inputs": texts[:BATCH]}) as response:
            await response.read()
        after = await batch_seconds(session, url)
        times.append((after[0] - before[0]) / max(1.0, after[1] - before[1]))
    return statistics.median(times)


async def phases(args: argparse.Namespace, url: str, session: aiohttp.ClientSession) -> dict[
        str, float]:
    rng = random.Random(11)
    one_batch = await full_batch_s(session, url, [sentence(rng, 12) for _ in range(BATCH)])
    seconds = args.seconds
    start = time.monotonic()
    alone = await bulk(session, url, args.queued, start + seconds)
    capacity = alone.inputs / (time.monotonic() - start)
    unloaded = await interactive(session, url, "interactive", time.monotonic() + seconds)
    out = {"one_batch_ms": 1000 * one_batch, "capacity": capacity,
           "unloaded_p99_ms": unloaded.p99_ms(), "unloaded_errors": unloaded.errors}
    print(f"capacity {capacity:.0f} inputs/s, one batch {1000 * one_batch:.0f} ms, unloaded "
          f"p99 {unloaded.p99_ms():.0f} ms", file=sys.stderr)
    for name, lane in (("lanes", "interactive"), ("fifo", "batch")):
        start = time.monotonic()
        until = start + seconds
        before = await batch_seconds(session, url)
        loaded, queries = await asyncio.gather(bulk(session, url, args.queued, until),
                                               interactive(session, url, lane, until))
        after = await batch_seconds(session, url)
        batches = max(1.0, after[1] - before[1])
        out[f"{name}_batch_ms"] = 1000 * (after[0] - before[0]) / batches
        out[f"{name}_batch_size"] = (after[2] - before[2]) / batches
        out[f"{name}_p99_ms"] = queries.p99_ms()
        out[f"{name}_errors"] = queries.errors + loaded.errors
        out[f"{name}_bulk"] = loaded.inputs / (time.monotonic() - start)
        out[f"{name}_all"] = out[f"{name}_bulk"] + queries.inputs / (time.monotonic() - start)
        print(f"{name}: p99 {out[f'{name}_p99_ms']:.0f} ms", file=sys.stderr)
    return out


async def corpus_rate(session: aiohttp.ClientSession, url: str, texts: list[str],
                      queued: int) -> float:
    started = time.monotonic()
    done = await bulk(session, url, queued, started + 3600, texts)
    assert done.errors == 0 and done.inputs == len(texts), done
    return len(texts) / (time.monotonic() - started)


async def run(args: argparse.Namespace) -> None:
    ports = free_port(), free_port()
    # The second server: a token budget no batch reaches, so each batch is one pass in
    # arrival order, padded to its longest input (what the server did before issue 23).
    servers = [start_server(ports[0], args.threads, {}),
               start_server(ports[1], args.threads,
                            {"MODEL_SERVER_MAX_BATCH_TOKENS": str(10**9)})]
    urls = [f"http://{HOST}:{port}" for port in ports]
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(
                limit=0)) as session:
            for url in urls:
                await wait_healthy(session, url)
            figures = await phases(args, urls[0], session)
            texts = corpus()
            # Interleaved (--corpus-rounds each): this machine's speed drifts over seconds.
            formed, arrival = [], []
            for _ in range(args.corpus_rounds):
                formed.append(await corpus_rate(session, urls[0], texts, 4))
                arrival.append(await corpus_rate(session, urls[1], texts, 4))
                print(f"corpus: formed {formed[-1]:.0f}/s, arrival {arrival[-1]:.0f}/s",
                      file=sys.stderr)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(30)
    report(figures, max(formed), max(arrival), args)


def report(f: dict[str, float], formed: float, arrival: float, args: argparse.Namespace) -> None:
    bound = f["unloaded_p99_ms"] + 2 * f["one_batch_ms"]
    print(f"all-MiniLM-L6-v2, {args.threads} threads, batch {BATCH}, bulk client "
          f"{args.queued} full batches in flight, interactive 1 request / 50 ms, "
          f"{args.seconds:g} s per phase")
    print(f"  one full batch: {f['one_batch_ms']:.1f} ms; capacity (bulk alone): "
          f"{f['capacity']:.0f} inputs/s")
    print(f"  interactive p99: unloaded {f['unloaded_p99_ms']:.1f} ms; beside bulk with "
          f"lanes {f['lanes_p99_ms']:.1f} ms; first-come {f['fifo_p99_ms']:.1f} ms "
          f"(first-come / lanes = {f['fifo_p99_ms'] / f['lanes_p99_ms']:.1f}x)")
    print(f"  goal: lanes p99 <= unloaded p99 + 2 x one batch = {bound:.1f} ms: "
          f"ratio {f['lanes_p99_ms'] / bound:.2f} (<= 1.00 meets)")
    print(f"  batches during the phases: lanes {f['lanes_batch_size']:.1f} inputs, "
          f"{f['lanes_batch_ms']:.0f} ms each; first-come {f['fifo_batch_size']:.1f} inputs, "
          f"{f['fifo_batch_ms']:.0f} ms each (the machine's speed under this load)")
    print(f"  goal: 0 interactive errors: lanes {f['lanes_errors']:.0f}, "
          f"first-come {f['fifo_errors']:.0f}, unloaded {f['unloaded_errors']:.0f}")
    print(f"  goal: bulk beside interactive >= 0.85 x capacity: lanes "
          f"{f['lanes_bulk']:.0f} inputs/s = {f['lanes_bulk'] / f['capacity']:.2f} "
          f"(first-come {f['fifo_bulk'] / f['capacity']:.2f}); bulk and interactive "
          f"together {f['lanes_all'] / f['capacity']:.2f} (first-come "
          f"{f['fifo_all'] / f['capacity']:.2f})")
    print(f"  goal: mixed-length corpus, length-formed >= 1.3 x arrival order: "
          f"{formed:.0f} vs {arrival:.0f} inputs/s = {formed / arrival:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--queued", type=int, default=16)
    parser.add_argument("--corpus-rounds", type=int, default=1)
    # One compute thread: on a machine whose cores other processes share, torch's threads
    # wait on each other (a batch of 32 took 1.1 s on 2 threads here, 0.25 s on one).
    parser.add_argument("--threads", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
