"""The onnx backend: the model's transformer in ONNX Runtime, tokenised with the model's
own ``tokenizer.json`` and pooled as its sentence-transformers config says."""

import functools
import json
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

    def __init__(self, session: Any, tokenizer: Any, counter: Any, layout: ModelLayout,
                 max_input_length: int, variant: Variant, model_file: Path) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._counter = counter
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
        tokenizer, counter = _tokenizers(Tokenizer, model_dir, layout, length)
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _LEVELS[variant.optimization_level])
        options.intra_op_num_threads = settings.num_threads
        options.inter_op_num_threads = 1
        # A spinning pool thread would take the core the event loop needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(model_file), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendLoadError(f"cannot load {model_file}: {exc}") from exc
        return cls(session, tokenizer, counter, layout, length, variant, model_file)

    def embed(self, texts: list[str]) -> Embeddings:
        feeds = self.encode(texts)
        mask = feeds["attention_mask"]
        return Embeddings(self.pool(self.forward(feeds), mask),
                          mask.sum(axis=1).tolist())

    def encode(self, texts: list[str]) -> dict[str, IntArray]:
        """The session's inputs: token ids and mask (and type ids if the graph takes them),
        padded to the longest text and truncated to ``max_input_length``."""
        encodings = self._tokenizer.encode_batch(texts)
        feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask for e in encodings],
                                            dtype=np.int64)}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return feeds

    def forward(self, feeds: dict[str, IntArray]) -> Vectors:
        """Token vectors (batch x sequence x dimension) from the session."""
        hidden: Vectors = self._session.run(
            None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        return hidden

    def pool(self, hidden: Vectors, mask: IntArray) -> Vectors:
        return pool(hidden, mask, self._pooling)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._counter.encode_batch(texts)]


def _tokenizers(tokenizer_cls: Any, model_dir: Path, layout: ModelLayout,
                length: int) -> tuple[Any, Any]:
    """One tokenizer that truncates and pads (for embedding), one that does not (counting)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise BackendLoadError(f"the onnx backend needs a fast tokenizer: no {path}")
    tokenizer, counter = tokenizer_cls.from_file(str(path)), tokenizer_cls.from_file(str(path))
    pad_id = tokenizer.token_to_id(layout.pad_token)
    if pad_id is None:
        raise BackendLoadError(f"pad token {layout.pad_token!r} is not in {path}")
    tokenizer.enable_truncation(max_length=length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=layout.pad_token)
    counter.no_truncation()
    counter.no_padding()
    return tokenizer, counter


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
