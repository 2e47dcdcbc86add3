"""CPU time per embedding of torch, onnx fp32 and onnx int8, in process, on one thread.

A figure that holds on a shared machine: with one compute thread each backend runs on the
calling thread, so that thread's CPU time (``time.thread_time``) is the work the model did,
whatever else the cores ran meanwhile (wall time at a load average of 10 swings by 3x).
For batches of 1, 8 and 32 of bench/model_server.py's sentences, interleaved rounds (each
backend in turn, so drift hits all alike); medians. The onnx rows split the time into
tokenize (tokenizer + numpy inputs), run (the ONNX Runtime session) and pool; the ratio
is torch's CPU time per embedding over the backend's (above 1: cheaper than torch).
Exports are reused from bench/model_server.py's cache (made on first use).

    .venv/bin/python bench/onnx_cpu.py [--rounds N] [--batches 1 8 32]
"""

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The tokenizer's own thread pool would do its work off the measured thread.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(REPO_ROOT))  # `import model_server` is the package, not bench/'s

from model_server.backends import SentenceTransformerBackend, resolve_model_dir  # noqa: E402
from model_server.config import DEFAULT_MODEL, Settings  # noqa: E402
from model_server.onnx_backend import OnnxBackend, load_onnx  # noqa: E402

EXPORT_DIR = REPO_ROOT / ".greenroom" / "bench-exports"  # bench/model_server.py's
INPUTS = 256
STAGES = ("tokenize", "run", "pool")
SUBJECTS = ["the cat", "a search engine", "our team", "the river", "this model", "my friend"]
VERBS = ["likes", "indexes", "ships", "crosses", "embeds", "reads"]
OBJECTS = ["short sentences", "the old bridge", "every document", "a new release"]


def sentences(count: int) -> list[str]:
    """bench/model_server.py's sentences (wrk cycles through the same ones)."""
    return [f"{SUBJECTS[i % 6]} {VERBS[i // 6 % 6]} {OBJECTS[i // 36 % 4]} number {i}"
            for i in range(count)]


def onnx_stages(backend: OnnxBackend, texts: list[str]) -> dict[str, float]:
    """CPU seconds of each stage of one ``embed``."""
    started = time.thread_time()
    feeds = backend.encode(texts)
    encoded = time.thread_time()
    hidden = backend.forward(feeds)
    ran = time.thread_time()
    backend.pool(hidden, feeds["attention_mask"])
    return {"tokenize": encoded - started, "run": ran - encoded,
            "pool": time.thread_time() - ran}


def torch_stages(backend: SentenceTransformerBackend, texts: list[str]) -> dict[str, float]:
    started = time.thread_time()
    backend.embed(texts)
    return {"total": time.thread_time() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    model_dir = resolve_model_dir(DEFAULT_MODEL)
    torch_backend = SentenceTransformerBackend.load(model_dir, None, 1)
    base = {"backend": "onnx", "export_dir": EXPORT_DIR, "num_threads": 1}
    onnx = {name: load_onnx(model_dir, Settings(**base, onnx_quantize=quantize))  # type: ignore[arg-type]
            for name, quantize in (("onnx-fp32", "none"), ("onnx-int8", "int8"))}
    measure: dict[str, Callable[[list[str]], dict[str, float]]] = {
        "torch": functools.partial(torch_stages, torch_backend),
        **{name: functools.partial(onnx_stages, backend) for name, backend in onnx.items()},
    }
    texts = sentences(INPUTS)
    print(f"one thread, CPU time of the calling thread; {args.rounds} interleaved rounds over "
          f"{INPUTS} sentences per batch size, medians; load average before: "
          f"{os.getloadavg()[0]:.1f}")
    for name, backend in onnx.items():
        agreement = backend.agreement
        if agreement is not None:
            print(f"{name}: {agreement.variant}, {agreement.summary()}")
    print(f"{'batch':>5} {'backend':>10} {'ms/batch':>8} {'tokenize':>8} {'run':>7} {'pool':>6}"
          f" {'emb/cpu-s':>9} {'vs torch':>8}")
    for batch in args.batches:
        per_round: dict[str, list[dict[str, float]]] = {name: [] for name in measure}
        for fn in measure.values():
            fn(texts[:batch])  # warm
        for _ in range(args.rounds):
            for name, fn in measure.items():
                sums: dict[str, float] = {}
                for start in range(0, INPUTS, batch):
                    for stage, seconds in fn(texts[start:start + batch]).items():
                        sums[stage] = sums.get(stage, 0.0) + seconds
                per_round[name].append({k: v * batch / INPUTS for k, v in sums.items()})
        torch_ms = statistics.median(sum(r.values()) for r in per_round["torch"])
        for name, rounds in per_round.items():
            total = statistics.median(sum(r.values()) for r in rounds)
            parts = [statistics.median(r[s] for r in rounds) * 1000 if s in rounds[0] else None
                     for s in STAGES]
            cells = " ".join(f"{p:>{w}.2f}" if p is not None else f"{'':>{w}}"
                             for p, w in zip(parts, (8, 7, 6), strict=True))
            print(f"{batch:>5} {name:>10} {total * 1000:>8.2f} {cells}"
                  f" {batch / total:>9.0f} {torch_ms / total:>8.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
