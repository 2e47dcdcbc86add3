"""The onnx backend: the model's transformer in ONNX Runtime, tokenised with the model's
own ``tokenizer.json`` and pooled as its sentence-transformers config says."""

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import structlog

from model_server.agreement import Agreement, check_floors, measure, set_vectors
from model_server.backends import Embeddings, SentenceTransformerBackend, Vectors
from model_server.config import Settings
from model_server.errors import BackendLoadError
from model_server.onnx_export import (
    ExportEntry,
    Variant,
    export_entry,
    export_fp32,
    model_dir_onnx,
    quantize_int8,
    write_atomically,
)

POOLING_TYPE = "sentence_transformers.models.Pooling"
# Modules the backend reproduces: the transformer (in ONNX), pooling (numpy) and the
# final Normalize (per request, as for the torch backend).
SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}
POOLING_MODES = ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")
_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}

IntArray = npt.NDArray[np.int64]

log = structlog.get_logger("model_server")


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """What the sentence-transformers files say about tokenising and pooling."""

    pooling: str
    max_seq_length: int
    pad_token: str

    @classmethod
    def read(cls, model_dir: Path) -> "ModelLayout":
        modules = _read_json(model_dir / "modules.json", default=[])
        kinds = {str(m["type"]).rsplit(".", 1)[-1] for m in modules}
        if kinds - SUPPORTED_MODULES:
            raise BackendLoadError(
                f"the onnx backend runs Transformer, Pooling and Normalize modules; "
                f"this model also has {sorted(kinds - SUPPORTED_MODULES)}")
        bert = _read_json(model_dir / "sentence_bert_config.json", default={})
        tokenizer = _read_json(model_dir / "tokenizer_config.json", default={})
        pad = tokenizer.get("pad_token") or "[PAD]"
        return cls(_pooling_mode(model_dir, modules),
                   int(bert.get("max_seq_length") or tokenizer.get("model_max_length") or 512),
                   pad["content"] if isinstance(pad, dict) else str(pad))


def _pooling_mode(model_dir: Path, modules: list[dict[str, Any]]) -> str:
    """mean_tokens, cls_token or max_tokens, from the Pooling module's config."""
    path = next((m["path"] for m in modules if m["type"] == POOLING_TYPE), None)
    if path is None:
        return "mean_tokens"  # a bare transformer directory: sentence-transformers' default
    pooling = _read_json(model_dir / path / "config.json", default={})
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise BackendLoadError(f"the onnx backend cannot reproduce pooling {pooling}")
    mode: str = modes[0]
    return mode.removeprefix("pooling_mode_")


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise BackendLoadError(f"cannot read {path}: {exc}") from exc


def pool(hidden: Vectors, mask: IntArray, mode: str) -> Vectors:
    """Sentence vectors from token vectors, as sentence-transformers' Pooling does."""
    if mode == "cls_token":
        return np.ascontiguousarray(hidden[:, 0])
    weights = mask[:, :, None].astype(np.float32)
    pooled: Vectors
    if mode == "max_tokens":
        pooled = np.where(weights > 0, hidden, -1e9).max(axis=1).astype(np.float32)
        return pooled
    summed = np.einsum("bsd,bs->bd", hidden, mask.astype(np.float32))
    pooled = (summed / np.clip(weights.sum(axis=1), 1e-9, None)).astype(np.float32)
    return pooled


class OnnxBackend:
    """An ONNX file in an ONNX Runtime session on the CPU."""

    name: ClassVar[str] = "onnx"
    dtype = "float32"

    def __init__(self, session: Any, tokenizers: "_Tokenizers", layout: ModelLayout,
                 max_input_length: int, variant: Variant, model_file: Path) -> None:
        self._session = session
        self._tokenizers = tokenizers
        self._pooling = layout.pooling
        self._inputs = [i.name for i in session.get_inputs()]
        self.max_input_length = max_input_length
        self.dimension = int(session.get_outputs()[0].shape[-1])
        self.variant = variant
        self.model_file = model_file
        self.quantization: str | None = None if variant.quantize == "none" else "int8"
        self.agreement: Agreement | None = None
        # What this load had to do: "exported", "quantized", "measured" (none when cached).
        self.steps: list[str] = []

    @classmethod
    def load(cls, model_dir: Path, model_file: Path, settings: Settings,
             variant: Variant) -> "OnnxBackend":
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendLoadError(
                f"the onnx backend needs onnxruntime and tokenizers: {exc}") from exc
        layout = ModelLayout.read(model_dir)
        length = min(settings.max_input_length or layout.max_seq_length, layout.max_seq_length)
        tokenizers = _Tokenizers(Tokenizer, model_dir, layout, length)
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _LEVELS[variant.optimization_level])
        options.intra_op_num_threads = settings.num_threads
        options.inter_op_num_threads = 1
        # A spinning pool thread would take the core the event loop needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Without the arena (and so without its memory patterns) a batch's buffers are
        # freed when it ends: less memory, slower batches (config.py, issue 28).
        options.enable_cpu_mem_arena = settings.onnx_memory_arena
        options.enable_mem_pattern = settings.onnx_memory_arena
        try:
            session = ort.InferenceSession(str(model_file), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendLoadError(f"cannot load {model_file}: {exc}") from exc
        return cls(session, tokenizers, layout, length, variant, model_file)

    def embed(self, texts: list[str]) -> Embeddings:
        feeds = self.encode(texts)
        mask = feeds["attention_mask"]
        return Embeddings(self.pool(self.forward(feeds), mask),
                          mask.sum(axis=1).tolist())

    def encode(self, texts: list[str]) -> dict[str, IntArray]:
        """The session's inputs: token ids and mask (and type ids if the graph takes them),
        padded to the longest text and truncated to ``max_input_length``."""
        feeds = self._tokenizers.encode(texts)
        if "token_type_ids" not in self._inputs:
            del feeds["token_type_ids"]
        return feeds

    def forward(self, feeds: dict[str, IntArray]) -> Vectors:
        """Token vectors (batch x sequence x dimension) from the session."""
        hidden: Vectors = self._session.run(
            None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        return hidden

    def pool(self, hidden: Vectors, mask: IntArray) -> Vectors:
        return pool(hidden, mask, self._pooling)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizers.counter.encode_batch(texts)]


class _Tokenizers:
    """The model's tokenizer as it is (for counting) and, made on first need, a second one
    that truncates (an input longer than the model takes). Inputs that fit, the common
    case, are padded here: one tokenizer in memory, ~8 MB less per replica (issue 28)."""

    def __init__(self, tokenizer_cls: Any, model_dir: Path, layout: ModelLayout,
                 length: int) -> None:
        self._path = model_dir / "tokenizer.json"
        if not self._path.is_file():
            raise BackendLoadError(f"the onnx backend needs a fast tokenizer: no {self._path}")
        self._cls = tokenizer_cls
        self.counter = tokenizer_cls.from_file(str(self._path))
        self.counter.no_truncation()
        self.counter.no_padding()
        self._pad_token = layout.pad_token
        pad_id = self.counter.token_to_id(layout.pad_token)
        if pad_id is None:
            raise BackendLoadError(f"pad token {layout.pad_token!r} is not in {self._path}")
        self._pad_id = int(pad_id)
        self._length = length
        self._truncating: Any = None
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> dict[str, IntArray]:
        """Token ids, mask and type ids, padded to the longest text (right, with the pad
        token, type id 0: as the tokenizer's own padding) and truncated to ``length``."""
        encodings = self.counter.encode_batch(texts)
        if any(len(e.ids) > self._length for e in encodings):
            encodings = self._truncator().encode_batch(texts)
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = e.attention_mask
            types[row, :n] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def _truncator(self) -> Any:
        with self._lock:
            if self._truncating is None:
                tokenizer = self._cls.from_file(str(self._path))
                tokenizer.enable_truncation(max_length=self._length)
                tokenizer.no_padding()
                self._truncating = tokenizer
            return self._truncating


class _Reference:
    """The torch sentence-transformers model, loaded only when an export or a
    measurement needs it: a start that finds both cached never imports torch."""

    def __init__(self, model_dir: Path, settings: Settings) -> None:
        self._model_dir = model_dir
        self._settings = settings
        self._backend: SentenceTransformerBackend | None = None

    def get(self) -> SentenceTransformerBackend:
        if self._backend is None:
            self._backend = SentenceTransformerBackend.load(
                self._model_dir, self._settings.max_input_length, self._settings.num_threads)
        return self._backend


def onnx_file(model_dir: Path, entry: ExportEntry, variant: Variant,
              reference: _Reference, steps: list[str]) -> Path:
    """The variant's ONNX file, exported and quantised on first use (under the entry's lock)."""
    own = model_dir_onnx(model_dir)
    if own is not None and variant.quantize == "none":
        return own
    target = entry.onnx(variant.file_label)
    if target.is_file():
        return target
    with entry.locked():
        fp32 = own or entry.onnx("fp32")
        if not fp32.is_file():
            model = reference.get().model
            export_fp32(model[0].auto_model, model.tokenizer, fp32)
            steps.append("exported")
            log.info("onnx_exported", model_dir=str(model_dir), file=str(fp32))
        if not target.is_file():
            quantize_int8(fp32, target, variant.isa)
            steps.append("quantized")
            log.info("onnx_quantized", file=str(target), isa=variant.isa)
    return target


def reference_vectors(entry: ExportEntry, reference: _Reference, length: int,
                      steps: list[str]) -> Vectors:
    """torch's vectors for the agreement set, computed once per model and input length."""
    path = entry.reference(length)
    if path.is_file():
        return np.asarray(np.load(path), dtype=np.float32)
    vectors = set_vectors(reference.get().embed)
    with entry.locked():
        write_atomically(path, functools.partial(_save_npy, vectors=vectors))
    steps.append("referenced")
    return vectors


def _save_npy(path: Path, vectors: Vectors) -> None:
    with path.open("wb") as fh:  # a file, not a name: np.save would append ".npy"
        np.save(fh, vectors)


def recorded_agreement(backend: OnnxBackend, entry: ExportEntry,
                       reference: _Reference, steps: list[str]) -> Agreement:
    """The variant's agreement with torch: read from its record, or measured and recorded."""
    path = entry.record(backend.variant.label, backend.max_input_length)
    if path.is_file():
        return Agreement(**json.loads(path.read_text()))
    ref = reference_vectors(entry, reference, backend.max_input_length, steps)
    agreement = measure(ref, backend.embed, reference_name="sentence-transformers (torch)",
                        variant_name=f"onnx {backend.variant.label}")
    body = json.dumps(agreement.as_dict(), indent=2).encode()
    with entry.locked():
        write_atomically(path, lambda tmp: tmp.write_bytes(body))
    steps.append("measured")
    log.info("agreement_measured", **agreement.as_dict())
    return agreement


def load_onnx(model_dir: Path, settings: Settings) -> OnnxBackend:
    """Find or make the variant's file, load it, and refuse it under the agreement floors."""
    variant = Variant.from_settings(settings)
    ModelLayout.read(model_dir)  # a model it cannot reproduce fails before any export
    entry = (ExportEntry(settings.export_entry) if settings.export_entry is not None
             else export_entry(model_dir, settings.export_dir))
    reference = _Reference(model_dir, settings)
    steps: list[str] = []
    try:
        model_file = onnx_file(model_dir, entry, variant, reference, steps)
    except OSError as exc:
        raise BackendLoadError(f"cannot write the export cache {entry.root}: {exc}") from exc
    backend = OnnxBackend.load(model_dir, model_file, settings, variant)
    backend.agreement = recorded_agreement(backend, entry, reference, steps)
    backend.steps = steps
    check_floors(backend.agreement, settings.onnx_min_mean_cosine,
                 settings.onnx_min_top1_agreement)
    return backend
