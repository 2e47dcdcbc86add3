"""The compatibility gate's time against the probe set's embedding in process.

Starts two real model servers on 127.0.0.1, the serving generation (all-MiniLM-L6-v2 on
torch) and the new one (`--new`: its ONNX fp32 export by default, or torch again), and
runs the gate's measurement (worker/compatibility.py `measure`: both generations embed
the bundled probe set over HTTP at once, then the figures) against the peer measured in
the same run, with the servers idle: the same probe set embedded by the same model in
this process, in the gate's batches (32), with the same torch threads. Rounds alternate
the two, so a drift in this machine's speed hits both. Prints each median and the ratio;
the gate embeds the probe twice (once per generation, at once), so on a machine with
fewer cores than the two servers' threads a ratio near 2 is the floor, not overhead.

The ONNX export is made once and reused (`.greenroom/bench-exports`, shared with
bench/model_server.py; the first start exports: minutes on two cores).

    .venv/bin/python bench/compatibility_gate.py [--rounds 5] [--new onnx-fp32|torch]
        [--threads N]
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.model_server import free_port, start_server, wait_healthy  # noqa: E402
from model_server.backends import SentenceTransformerBackend, resolve_model_dir  # noqa: E402
from model_server.config import DEFAULT_MODEL, cpu_allowance  # noqa: E402
from worker.compatibility import CHUNK, Measurement, Side, bundled_probe, measure  # noqa: E402

HOST = "127.0.0.1"


def in_process(backend: SentenceTransformerBackend, probe: list[str]) -> float:
    """Seconds to embed the probe set in this process, in the gate's batches."""
    started = time.perf_counter()
    for start in range(0, len(probe), CHUNK):
        backend.embed(probe[start:start + CHUNK])
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    probe = list(bundled_probe())
    server_args = argparse.Namespace(threads=args.threads, batch_size=32, wait_ms=10.0)
    ports = free_port(), free_port()
    servers: list[subprocess.Popen[bytes]] = [
        start_server(ports[0], server_args, "torch"),
        start_server(ports[1], server_args, args.new)]
    try:
        async with aiohttp.ClientSession() as http:
            urls = [f"http://{HOST}:{port}" for port in ports]
            for url in urls:
                await wait_healthy(http, url, within_s=900)
            backend = SentenceTransformerBackend.load(resolve_model_dir(DEFAULT_MODEL), None,
                                                      args.threads)
            old, new = Side(1, [urls[0]], {}), Side(2, [urls[1]], {})
            in_process(backend, probe)  # warm both: the first batches pay for allocation
            await measure(http, old, new, probe)
            local, gate, measured = [], [], None
            for _ in range(args.rounds):
                local.append(in_process(backend, probe))
                measured = await measure(http, old, new, probe)
                gate.append(measured.time_s)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    assert measured is not None
    report(args, probe, local, gate, measured)


def report(args: argparse.Namespace, probe: list[str], local: list[float], gate: list[float],
           measured: Measurement) -> None:
    local_s, gate_s = statistics.median(local), statistics.median(gate)
    print(f"probe set: {len(probe)} bundled sentences, batches of {CHUNK}; "
          f"{args.threads} torch threads per process; {args.rounds} rounds each, alternating")
    print(f"in process (torch, {DEFAULT_MODEL}): median {local_s:.3f} s "
          f"({', '.join(f'{t:.2f}' for t in local)})")
    print(f"gate (torch → {args.new}, two servers over HTTP at once, then the figures): "
          f"median {gate_s:.3f} s ({', '.join(f'{t:.2f}' for t in gate)})")
    print(f"last gate round: {measured}")
    print(f"ratio gate / in-process embedding of the probe set: {gate_s / local_s:.2f}x "
          "(the gate embeds it twice: once per generation)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new", choices=("onnx-fp32", "torch"), default="onnx-fp32")
    parser.add_argument("--threads", type=int, default=cpu_allowance())
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
