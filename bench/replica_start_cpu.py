"""What a process-runtime replica's start costs, forked from the zygote against spawned
(GREENROOM_REPLICA_FORK_SERVER=false): wall time from `ProcessRuntime.start` to /health,
and the CPU the replica process used by then (/proc/<pid>/stat: user + system, all its
threads), for the hashing backend (what most tests start) and the default model on ONNX.
The zygote's own start (once per worker) is printed beside them.

    .venv/bin/python bench/replica_start_cpu.py [--starts 5]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cold_start import prepare, warm_zygote  # noqa: E402
from model_server.config import DEFAULT_MODEL  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from worker import auto_backend  # noqa: E402
from worker.health import wait_ready  # noqa: E402
from worker.runtimes.base import ReplicaSpec  # noqa: E402
from worker.runtimes.process import ProcessRuntime  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def one(runtime: ProcessRuntime, http: aiohttp.ClientSession,
              source: dict[str, Any]) -> tuple[float, float, str]:
    spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="bench/cpu",
                       generation=1, task_id=None, source=source)
    started = time.perf_counter()
    replica = await runtime.start(spec)
    try:
        await wait_ready(runtime, http, replica, asyncio.get_running_loop().time() + 120)
        wall = time.perf_counter() - started
        meta = json.loads((runtime._dir(replica.runtime_ref) / "meta.json").read_text())
        return wall, cpu_s(int(meta["pid"])), str(meta["started"])
    finally:
        await runtime.remove(replica.runtime_ref)


async def bench(starts: int) -> None:
    cache = auto_backend.cache_dir(Settings())
    entry = cache / (await asyncio.to_thread(prepare, cache))["fingerprint"]
    sources: dict[str, dict[str, Any]] = {
        "hashing": {"backend": "hashing", "dimension": 384},
        "onnx": {"backend": "onnx", "location": DEFAULT_MODEL, "export_entry": str(entry),
                 "export_dir": str(cache)}}
    print(f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="greenroom-cpu-") as tmp:
        settings = Settings(state_dir=Path(tmp), replica_cgroups=False)
        forking = ProcessRuntime(settings)
        spawning = ProcessRuntime(settings.model_copy(update={"replica_fork_server": False}))
        took = await warm_zygote(forking)
        server = forking._fork_server
        assert server is not None and server.pid is not None
        print(f"zygote: ready {took:.2f} s after it was begun, "
              f"{cpu_s(server.pid):.2f} s of CPU (once per worker)", flush=True)
        async with aiohttp.ClientSession() as http:
            for backend, source in sources.items():
                figures: dict[str, list[tuple[float, float]]] = {}
                for _ in range(starts):
                    for runtime in (forking, spawning):
                        wall, cpu, how = await one(runtime, http, source)
                        figures.setdefault(how, []).append((wall, cpu))
                for how, got in figures.items():
                    print(f"  {backend:7} {how:7}: start to healthy "
                          f"{statistics.median(w for w, _ in got):.3f} s, replica CPU "
                          f"{statistics.median(c for _, c in got):.3f} s "
                          f"(medians of {len(got)})", flush=True)
        await forking.close()
        await spawning.close()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5)
    asyncio.run(bench(parser.parse_args().starts))


if __name__ == "__main__":
    main()
