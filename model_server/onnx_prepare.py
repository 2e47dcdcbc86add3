"""The `auto` backend's preparation of one model's files, made once per content and variant:
export the transformer to ONNX (fp32), embed the agreement set with torch and with the
export, and decide. fp32 must agree with torch at `AUTO_MIN_MEAN_COSINE` (mean cosine) for
replicas to run ONNX; an opt-in int8 variant is quantised and measured here too, under the
server's usual floors, and its figures recorded.

A worker runs this in a process of its own (it imports torch; the worker does not):

    python -m model_server.onnx_prepare LOCATION CACHE_DIR [--quantize int8]

The files and the decision land in `CACHE_DIR/<fingerprint>/` (model_server/onnx_export.py);
a worker copies them beside the model's replicas, which then load the export with
onnxruntime and tokenizers only. `cached_decision` reads a decision already made without
importing any of it.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model_server.backends import resolve_model_dir
from model_server.config import Quantization, Settings
from model_server.errors import BackendLoadError
from model_server.logs import configure_logging
from model_server.onnx_export import ExportEntry, fingerprint, write_atomically

# fp32 replaces torch only when it agrees this closely on the agreement set.
AUTO_MIN_MEAN_COSINE = 0.9999
ONNX = "onnx"
TORCH = "sentence-transformers"


def decision_path(entry: ExportEntry, quantize: Quantization) -> Path:
    return entry.root / f"decision-{'fp32' if quantize == 'none' else 'int8'}.json"


def entry_for(location: str, cache_dir: Path) -> ExportEntry:
    """The cache folder of the model at `location` (a directory or package:NAME)."""
    return ExportEntry(cache_dir / fingerprint(resolve_model_dir(location)))


def cached_decision(entry: ExportEntry, quantize: Quantization) -> dict[str, Any] | None:
    path = decision_path(entry, quantize)
    try:
        decision: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return decision


def _load(model_dir: Path, entry: ExportEntry, quantize: Quantization,
          min_mean_cosine: float) -> dict[str, Any]:
    from model_server.onnx_backend import load_onnx  # onnxruntime only once work is needed

    settings = Settings(backend="onnx", export_dir=entry.root.parent, export_entry=entry.root,
                        onnx_quantize=quantize, onnx_min_mean_cosine=min_mean_cosine)
    try:
        backend = load_onnx(model_dir, settings)
    except BackendLoadError as exc:
        return {"backend": TORCH, "reason": str(exc)}
    assert backend.agreement is not None
    return {"backend": ONNX, "variant": backend.variant.label,
            "max_input_length": backend.max_input_length,
            "agreement": backend.agreement.as_dict(), "steps": backend.steps}


def prepare(location: str, cache_dir: Path, quantize: Quantization = "none") -> dict[str, Any]:
    """Decide (and record) whether replicas of the model at `location` run ONNX.

    fp32 is always made and judged first; with `quantize="int8"` the int8 variant follows,
    and a refused int8 leaves the decision at fp32 with the reason."""
    model_dir = resolve_model_dir(location)
    entry = ExportEntry(cache_dir / fingerprint(model_dir))
    done = cached_decision(entry, quantize)
    if done is not None:
        return {**done, "cached": True}
    decision = cached_decision(entry, "none") or _record(entry, "none", {
        **_load(model_dir, entry, "none", AUTO_MIN_MEAN_COSINE),
        "fingerprint": entry.root.name, "quantize": "none"})
    if quantize == "int8" and decision["backend"] == ONNX:
        int8 = _load(model_dir, entry, "int8", Settings().onnx_min_mean_cosine)
        if int8["backend"] == ONNX:
            decision |= {**int8, "quantize": "int8", "fp32_agreement": decision["agreement"]}
        else:
            decision = {**decision, "int8_refused": int8["reason"]}
        _record(entry, "int8", decision)
    return decision


def _record(entry: ExportEntry, quantize: Quantization,
            decision: dict[str, Any]) -> dict[str, Any]:
    entry.root.mkdir(parents=True, exist_ok=True)
    body = json.dumps(decision, indent=2).encode()
    with entry.locked():
        write_atomically(decision_path(entry, quantize), lambda tmp: tmp.write_bytes(body))
    return decision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_server.onnx_prepare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("location", help="model directory or package:NAME")
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    args = parser.parse_args(argv)
    configure_logging("INFO")  # stderr: stdout carries the decision alone
    try:
        decision = prepare(args.location, args.cache_dir, args.quantize)
    except BackendLoadError as exc:  # no model there: nothing to record
        print(json.dumps({"backend": TORCH, "reason": str(exc)}))
        return 2
    print(json.dumps(decision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
