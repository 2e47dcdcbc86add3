"""ONNX files for the onnx backend: the model directory's own, or exported once (offline,
from the local weights) and quantised once into an export cache shared by replicas."""

import contextlib
import fcntl
import hashlib
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from model_server.config import Isa, OptimizationLevel, Quantization, Settings
from model_server.errors import BackendLoadError

# Bump when the export or quantisation below changes, so old cache entries are not reused.
# 2: signed 7-bit weights on AVX2/AVX-512 (was unsigned 8-bit); 3: fp32 weights in a file
# of their own beside the graph (`weights_file`), which ONNX Runtime maps (issue 28).
EXPORTER_VERSION = "3"
OPSET = 17
# Where sentence-transformers (and Optimum) keep a model's ONNX file.
MODEL_DIR_ONNX = ("onnx/model.onnx", "model.onnx")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

log = structlog.get_logger("model_server")


@dataclass(frozen=True, slots=True)
class Variant:
    """Which ONNX file a replica runs and how its session is optimised."""

    quantize: Quantization
    isa: Isa
    optimization_level: OptimizationLevel

    @classmethod
    def from_settings(cls, settings: Settings) -> "Variant":
        isa = settings.onnx_isa if settings.onnx_isa != "auto" else detect_isa()
        return cls(settings.onnx_quantize, isa, settings.onnx_optimization_level)

    @property
    def file_label(self) -> str:
        """Names the file: the int8 weights depend on the ISA, fp32 ones do not."""
        return "fp32" if self.quantize == "none" else f"int8-{self.isa}"

    @property
    def label(self) -> str:
        """Names the agreement record: the session's optimisations change the numbers."""
        return f"{self.file_label}-opt-{self.optimization_level}"


def detect_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> Isa:
    """The best int8 kernel family this CPU has."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return "avx2"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def model_dir_onnx(model_dir: Path) -> Path | None:
    """The ONNX file the model directory ships, if any."""
    for name in MODEL_DIR_ONNX:
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def fingerprint(model_dir: Path) -> str:
    """A content hash of the model directory: the same model shares one cache entry
    whichever path (host, container) it is read from."""
    digest = hashlib.sha256(EXPORTER_VERSION.encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode())
        with path.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class ExportEntry:
    """One model's directory in the export cache."""

    root: Path

    def onnx(self, file_label: str) -> Path:
        return self.root / f"{file_label}.onnx"

    def record(self, label: str, max_input_length: int) -> Path:
        return self.root / f"agreement-{label}-len{max_input_length}.json"

    def reference(self, max_input_length: int) -> Path:
        """The reference backend's vectors for the agreement set."""
        return self.root / f"reference-len{max_input_length}.npy"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Replicas starting together export once: the others wait, then reuse it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def export_entry(model_dir: Path, export_dir: Path) -> ExportEntry:
    return ExportEntry(export_dir / fingerprint(model_dir))


def write_atomically(target: Path, write: Any) -> None:
    """Write through ``write(tmp_path)`` then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # replicas may run as another user than the exporting one
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def weights_file(graph: Path) -> Path:
    """Where an export's weights are: beside its graph, named after it."""
    return graph.with_name(graph.name + ".data")


def export_fp32(transformer: Any, tokenizer: Any, target: Path) -> None:
    """Trace the Hugging Face model (token ids in, token embeddings out) to ONNX: the graph
    in `target`, its weights in `weights_file(target)` (see `_weights_beside`)."""
    import torch

    sample = tokenizer(["an export sample", "a second, longer export sample"],
                       padding=True, return_tensors="pt")
    names = [name for name in TOKEN_INPUTS if name in sample]
    wrapper = _token_embeddings(transformer, names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        traced = Path(tmp) / "traced.onnx"
        with torch.inference_mode():
            torch.onnx.export(
                wrapper, tuple(sample[name] for name in names), str(traced), dynamo=False,
                input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                opset_version=OPSET,
            )
        _weights_beside(traced, target, Path(tmp))
    # The exporter leaves modules in the mode it found the wrapper in; keep eval.
    transformer.eval()


def _weights_beside(traced: Path, target: Path, staging: Path) -> None:
    """The traced model as two files: the graph (`target`) and its weights beside it. A
    weights file is memory-mapped by ONNX Runtime and read in place, where weights inside
    the graph's file are copied onto the heap: a replica's session is ~37 MB smaller and
    loads faster (the token-embedding table, 47 MB for MiniLM, is read only where a text's
    tokens fall; the pages are the file's, clean, and shared by every replica of the
    export on a host). The weights land first, the graph last: a reader that finds the
    graph finds its weights."""
    import onnx

    model = onnx.load(str(traced))
    staged = staging / target.name
    weights = weights_file(target)
    onnx.save_model(model, str(staged), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=weights.name, size_threshold=1024)
    for name in (weights.name, target.name):
        os.chmod(staging / name, 0o644)  # replicas may run as another user
    os.replace(staging / weights.name, weights)
    os.replace(staged, target)


def _token_embeddings(model: Any, names: list[str]) -> Any:
    """A module taking the token tensors positionally, as the exporter passes them."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(names, tensors, strict=True))).last_hidden_state

    return TokenEmbeddings()


# Weights per ISA: signed int8, per-channel scales. MLAS multiplies u8 activations by s8
# weights with VPMADDUBSW, whose pairwise 16-bit sums can saturate on x86 without VNNI
# (ONNX Runtime's quantisation guide); 7-bit weights (reduce_range) keep every pair in
# range there. VNNI and arm64 sum in 32 bits: full 8-bit weights. On this set (AVX2, bundled
# MiniLM, one thread, CPU time per batch of 32 short sentences) the choices measured:
#   u8 weights (u8u8 kernel)       mean cosine 0.9927, min 0.9666, top-1 1.000, 83-92 ms
#   s8 weights                     mean 0.9920, min 0.9616, top-1 1.000, 66-72 ms
#   s8 7-bit weights (chosen)      mean 0.9915, min 0.9666, top-1 1.000, 67-81 ms
#   per-tensor s8 (not per-channel) mean 0.960, min 0.840
# ONNX Runtime's BERT fusions (Attention, SkipLayerNorm, BiasGelu from an eager-attention
# export, then QAttention) did not beat the plain graph at these lengths: 70-79 ms.
_INT8_WEIGHTS: dict[str, tuple[str, bool]] = {  # ISA: (weight type, reduce_range)
    "avx512_vnni": ("QInt8", False), "arm64": ("QInt8", False),
    "avx512": ("QInt8", True), "avx2": ("QInt8", True),
}


def quantize_int8(source: Path, target: Path, isa: str) -> None:
    """Dynamic int8 quantisation of the MatMuls (activations quantised per batch)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise BackendLoadError(f"int8 quantisation needs onnxruntime and onnx: {exc}") from exc
    weights, reduce_range = _INT8_WEIGHTS[isa]

    def write(path: Path) -> None:
        quantize_dynamic(source, path, weight_type=getattr(QuantType, weights),
                         per_channel=True, reduce_range=reduce_range,
                         op_types_to_quantize=["MatMul", "Gemm"])

    write_atomically(target, write)
