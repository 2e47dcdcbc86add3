"""Do long inputs hurt short ones? One batch of 31 short sentences and one long input
(256 tokens after truncation), computed as one padded pass (max_batch_tokens unset) and
as token-budgeted passes (the server's default), per backend; medians of 5 runs.

The short inputs' answers wait for the whole batch, so the batch time is their latency.

    .venv/bin/python bench/batch_tokens.py [--max-batch-tokens N]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from model_server.backends import (  # noqa: E402
    Embedder,
    SentenceTransformerBackend,
    resolve_model_dir,
)
from model_server.batcher import plan_chunks  # noqa: E402
from model_server.config import DEFAULT_MODEL, Settings  # noqa: E402
from model_server.onnx_backend import load_onnx  # noqa: E402

EXPORT_DIR = REPO_ROOT / ".greenroom" / "bench-exports"
SHORT = [f"the cat likes short sentences number {i}" for i in range(31)]
LONG = " ".join(["the river winds through the valley past farms and villages"] * 30)
RUNS = 5


def batch_ms(backend: Embedder, texts: list[str], max_tokens: int | None) -> float:
    """Median milliseconds to embed ``texts`` as the batcher would."""
    def once() -> None:
        if max_tokens is None:
            backend.embed(texts)
            return
        lengths = [min(n, backend.max_input_length) for n in backend.count_tokens(texts)]
        for chunk in plan_chunks(lengths, len(texts), max_tokens)[1]:
            backend.embed([texts[i] for i in chunk])

    once()
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-batch-tokens", type=int, default=Settings().max_batch_tokens)
    args = parser.parse_args()
    model_dir = resolve_model_dir(DEFAULT_MODEL)
    threads = Settings().num_threads
    backends: dict[str, Embedder] = {
        "torch": SentenceTransformerBackend.load(model_dir, None, threads),
        "onnx-fp32": load_onnx(model_dir, Settings(backend="onnx", export_dir=EXPORT_DIR)),
        "onnx-int8": load_onnx(model_dir, Settings(backend="onnx", export_dir=EXPORT_DIR,
                                                   onnx_quantize="int8")),
    }
    print(f"31 short sentences + 1 long input (256 tokens); threads {threads}; "
          f"max_batch_tokens {args.max_batch_tokens}; medians of {RUNS} runs")
    print(f"{'backend':>10} {'32 short ms':>11} {'mixed, one pass':>15} {'mixed, budgeted':>15}"
          f" {'one pass / budgeted':>19}")
    for name, backend in backends.items():
        short = batch_ms(backend, [*SHORT, SHORT[0]], None)
        one_pass = batch_ms(backend, [*SHORT, LONG], None)
        budgeted = batch_ms(backend, [*SHORT, LONG], args.max_batch_tokens)
        print(f"{name:>10} {short:>11.1f} {one_pass:>15.1f} {budgeted:>15.1f}"
              f" {one_pass / budgeted:>19.2f}")


if __name__ == "__main__":
    main()
