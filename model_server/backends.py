"""Embedding backends: the real sentence-transformers model and a hashing test backend."""

import functools
import hashlib
import importlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from model_server.config import PACKAGE_PREFIX
from model_server.errors import BackendLoadError

Vectors = npt.NDArray[np.float32]

HASHING_MAX_INPUT_LENGTH = 512
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Embeddings:
    """Raw (not normalized) vectors, one row per input, with each input's token count,
    and their unit vectors once ``normalized`` has computed them for a whole batch."""

    vectors: Vectors
    token_counts: list[int]
    unit: Vectors | None = None

    def __len__(self) -> int:
        return len(self.token_counts)

    def slice(self, start: int, stop: int) -> "Embeddings":
        unit = None if self.unit is None else self.unit[start:stop]
        return Embeddings(self.vectors[start:stop], self.token_counts[start:stop], unit)

    def normalized(self) -> "Embeddings":
        """The same rows with their unit vectors: one numpy pass per batch on the compute
        thread, instead of one per request on the event loop."""
        return replace(self, unit=normalize_rows(self.vectors))

    def unit_vectors(self) -> Vectors:
        return self.unit if self.unit is not None else normalize_rows(self.vectors)

    def reordered(self, order: list[int]) -> "Embeddings":
        """Rows computed in ``order`` (row i is input ``order[i]``) put back in input order."""
        inverse = np.empty(len(order), dtype=np.intp)
        inverse[np.asarray(order, dtype=np.intp)] = np.arange(len(order))
        return Embeddings(self.vectors[inverse], [self.token_counts[i] for i in inverse])

    @classmethod
    def concat(cls, parts: list["Embeddings"]) -> "Embeddings":
        if len(parts) == 1:
            return parts[0]
        counts = [count for part in parts for count in part.token_counts]
        units = [part.unit for part in parts if part.unit is not None]
        unit = np.concatenate(units) if len(units) == len(parts) else None
        return cls(np.concatenate([part.vectors for part in parts]), counts, unit)


def normalize_rows(vectors: Vectors) -> Vectors:
    """L2-normalize each row; an all-zero row stays zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: Vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return normalized


class Embedder(Protocol):
    """What the server needs from a backend. ``embed`` runs on the compute thread."""

    name: ClassVar[str]
    dimension: int
    max_input_length: int
    dtype: str
    # Reported by /info: "int8" for a quantised variant, and its recorded agreement
    # with the reference backend (model_server/agreement.py).
    quantization: str | None
    agreement: Any

    def embed(self, texts: list[str]) -> Embeddings:
        """Embed ``texts``, each truncated to ``max_input_length`` tokens."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's length in tokens, without truncation."""
        ...


class HashingEmbedder:
    """Test backend, not a semantic model: signed feature hashing of lower-cased words.

    Each word is hashed with blake2b (stable across processes, unlike ``hash()``) into one
    of ``dimension`` buckets with a sign. Fast and dependency-free; texts sharing words get
    similar vectors, and that is all it knows about meaning.
    """

    name: ClassVar[str] = "hashing"
    dtype = "float32"
    quantization: str | None = None
    agreement = None

    def __init__(self, dimension: int, max_input_length: int = HASHING_MAX_INPUT_LENGTH) -> None:
        self.dimension = dimension
        self.max_input_length = max_input_length

    def embed(self, texts: list[str]) -> Embeddings:
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        counts = []
        for row, text in enumerate(texts):
            words = _words(text)[: self.max_input_length]
            counts.append(len(words))
            for word in words:
                bucket, sign = _hashed(word, self.dimension)
                vectors[row, bucket] += sign
        return Embeddings(vectors, counts)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(_words(text)) for text in texts]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@functools.lru_cache(maxsize=65536)
def _hashed(word: str, dimension: int) -> tuple[int, float]:
    value = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    sign = 1.0 if value >> 63 else -1.0
    return value % dimension, sign


class SentenceTransformerBackend:
    """A sentence-transformers model from a local directory, run with torch on the CPU."""

    name: ClassVar[str] = "sentence-transformers"
    quantization: str | None = None
    agreement = None

    def __init__(self, model: Any, max_input_length: int | None) -> None:
        import torch

        self._torch = torch
        self._model = model
        model_max = model.max_seq_length or 512
        self.max_input_length = min(max_input_length or model_max, model_max)
        model.max_seq_length = self.max_input_length
        self.dimension = int(_embedding_dimension(model))
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        # Normalization is per request (``normalize``), so the model's own is skipped.
        self._modules = [m for m in model if type(m).__name__ != "Normalize"]
        self._preprocess = getattr(model, "preprocess", None) or model.tokenize

    @classmethod
    def load(
        cls, model_dir: Path, max_input_length: int | None, num_threads: int
    ) -> "SentenceTransformerBackend":
        """Load the model offline; any failure becomes a BackendLoadError."""
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise BackendLoadError(
                f"the sentence-transformers backend needs torch and sentence-transformers: {exc}"
            ) from exc
        torch.set_num_threads(num_threads)
        try:
            model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
            model.eval()
            return cls(model, max_input_length)
        except Exception as exc:
            raise BackendLoadError(f"cannot load model from {model_dir}: {exc}") from exc

    @property
    def model(self) -> Any:
        """The SentenceTransformer itself (the onnx backend exports its transformer)."""
        return self._model

    def embed(self, texts: list[str]) -> Embeddings:
        with self._torch.inference_mode():
            features = self._preprocess(texts)
            counts = features["attention_mask"].sum(dim=1).tolist()
            for module in self._modules:
                features = module(features)
            vectors = features["sentence_embedding"].float().numpy()
        return Embeddings(vectors, counts)

    def count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self._model.tokenizer(texts, add_special_tokens=True, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]


def _embedding_dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None)
    if getter is None:
        getter = model.get_sentence_embedding_dimension
    return int(getter())


def resolve_model_dir(location: str) -> Path:
    """A model location: a directory, or ``package:NAME`` for a package's bundled model."""
    if location.startswith(PACKAGE_PREFIX):
        path = _package_model_dir(location.removeprefix(PACKAGE_PREFIX))
    else:
        path = Path(location).expanduser()
    if not path.is_dir():
        raise BackendLoadError(f"model directory not found: {path}")
    if not any((path / name).is_file() for name in ("modules.json", "config.json")):
        raise BackendLoadError(f"no model in {path} (neither modules.json nor config.json)")
    return path


def _package_model_dir(package: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise BackendLoadError(f"model package {package!r} is not installed: {exc}") from exc
    getter = getattr(module, "get_model_path", None)
    if callable(getter):
        return Path(getter())
    return Path(str(module.__file__)).parent / "model"
