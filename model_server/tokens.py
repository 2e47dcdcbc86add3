"""Tokenizers behind TEI's /tokenize, /decode and /embed_all, and token-id inputs.

The real model's tokenizer is its Hugging Face tokenizer. The hashing test backend gets
a test tokenizer, named as such: byte-level (each UTF-8 byte one token, ids 3..258, with
[CLS]=1 and [SEP]=2 around a text when special tokens are added), deterministic and
exactly reversible, so /decode gives back what /tokenize took. Its per-token vectors
(/embed_all) are the hashing embedding of each token's text.

Token-id inputs (OpenAI's and TEI's `Ids`) are decoded to text and embedded as text: for
the WordPiece model this gives the same tokens back for ordinary text; the hashing test
backend reads the decoded text.
"""

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model_server.backends import Embedder, HashingEmbedder, Vectors
from model_server.errors import InvalidRequest

PAD, CLS, SEP = 0, 1, 2
BYTE_OFFSET = 3
HASHING_VOCAB = BYTE_OFFSET + 256
_SPECIAL_TEXT = {PAD: "[PAD]", CLS: "[CLS]", SEP: "[SEP]"}


@dataclass(frozen=True, slots=True)
class Token:
    """TEI's SimpleToken: start and stop are character offsets in the input (None for a
    special token)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "special": self.special,
                "start": self.start, "stop": self.stop}


class Tokenizer(Protocol):
    vocab_size: int

    def tokenize(self, text: str, add_special_tokens: bool) -> list[Token]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str: ...


class HashingTokenizer:
    """Test tokenizer of the hashing backend: one token per UTF-8 byte (not a real one)."""

    vocab_size = HASHING_VOCAB

    def tokenize(self, text: str, add_special_tokens: bool) -> list[Token]:
        tokens = [Token(CLS, "[CLS]", True, None, None)] if add_special_tokens else []
        for index, char in enumerate(text):
            for byte in char.encode("utf-8", "surrogatepass"):
                tokens.append(Token(BYTE_OFFSET + byte, char, False, index, index + 1))
        if add_special_tokens:
            tokens.append(Token(SEP, "[SEP]", True, None, None))
        return tokens

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        out, pending = [], bytearray()
        for token_id in ids:
            if token_id >= BYTE_OFFSET:
                pending.append(token_id - BYTE_OFFSET)
                continue
            out.append(pending.decode("utf-8", "replace"))
            pending = bytearray()
            if not skip_special_tokens:
                out.append(_SPECIAL_TEXT[token_id])
        out.append(pending.decode("utf-8", "replace"))
        return "".join(out)


class HuggingFaceTokenizer:
    """A model's own (fast) Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.vocab_size = len(tokenizer)
        self._special = set(tokenizer.all_special_ids)

    def tokenize(self, text: str, add_special_tokens: bool) -> list[Token]:
        encoded = self._tok(text, add_special_tokens=add_special_tokens,
                            return_offsets_mapping=True, verbose=False)
        ids = encoded["input_ids"]
        pieces = self._tok.convert_ids_to_tokens(ids)
        tokens = []
        for token_id, piece, (start, stop) in zip(ids, pieces, encoded["offset_mapping"],
                                                  strict=True):
            special = token_id in self._special
            tokens.append(Token(int(token_id), piece if special else text[start:stop],
                                special, None if special else start, None if special else stop))
        return tokens

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=skip_special_tokens))


def tokenizer_for(backend: Embedder) -> Tokenizer:
    """The backend's tokenizer; a 422 for a backend that has none."""
    if isinstance(backend, HashingEmbedder):
        return HashingTokenizer()
    own = getattr(backend, "tokenizer", None)
    if own is None:
        own = getattr(getattr(backend, "_model", None), "tokenizer", None)
    if own is None or not hasattr(own, "convert_ids_to_tokens"):
        raise InvalidRequest(f"the {backend.name} backend has no tokenizer")
    return HuggingFaceTokenizer(own)


def check_ids(tokenizer: Tokenizer, ids: list[int], where: str) -> None:
    for index, token_id in enumerate(ids):
        if not 0 <= token_id < tokenizer.vocab_size:
            raise InvalidRequest(
                f"`{where}` token id {token_id} at {index} is outside the vocabulary "
                f"(0..{tokenizer.vocab_size - 1})",
                {"index": index, "id": token_id, "vocab_size": tokenizer.vocab_size})


def texts_from(backend: Embedder, inputs: list[str | list[int]], where: str) -> list[str]:
    """Every input as text; token-id inputs are checked and decoded."""
    if all(isinstance(item, str) for item in inputs):
        return inputs  # type: ignore[return-value]
    tokenizer = tokenizer_for(backend)
    texts = []
    for item in inputs:
        if isinstance(item, str):
            texts.append(item)
            continue
        check_ids(tokenizer, item, where)
        texts.append(tokenizer.decode(item, skip_special_tokens=True))
    return texts


def token_vectors(backend: Embedder, texts: list[str]) -> list[Vectors]:
    """One vector per token of each text (TEI's /embed_all); runs on a worker thread."""
    if isinstance(backend, HashingEmbedder):
        tokenizer = HashingTokenizer()
        out = []
        for text in texts:
            pieces = [t.text for t in tokenizer.tokenize(text, True)][: backend.max_input_length]
            out.append(backend.embed(pieces).vectors)
        return out
    model = getattr(backend, "_model", None)
    if model is None:
        raise InvalidRequest(f"the {backend.name} backend cannot return token embeddings")
    return _sentence_transformer_tokens(model, texts)


def _sentence_transformer_tokens(model: Any, texts: list[str]) -> list[Vectors]:
    import torch

    with torch.inference_mode():
        features = model.tokenize(texts)
        for module in model:
            if type(module).__name__ == "Pooling":
                break
            features = module(features)
        tokens = features["token_embeddings"].float().numpy()
        mask = features["attention_mask"].numpy().astype(bool)
    return [np.ascontiguousarray(tokens[row][mask[row]]) for row in range(len(texts))]
