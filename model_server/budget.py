"""What one request may ask of the model: tokens to compute and floats to answer.

`max_request_tokens` bounds the tokens one request makes the model compute (the sum over its
inputs, after truncation), as TEI's `--max-batch-tokens` does; `max_response_floats` bounds
the numbers one answer carries: inputs x dimension on /embed and /v1/embeddings, and
tokens x dimension on /embed_all, whose answer is one vector per token (a 1 MB request of
256 long inputs was a 290 MB answer before this bound). Both are 413 naming the limit.

Counting tokens costs a tokenizer pass, so a request is first measured by a bound no
tokenizer can pass (each token covers at least one UTF-8 byte, plus a few special
tokens); only a request whose bound is over the budget is tokenized to be judged exactly.
"""

import asyncio
from collections.abc import Callable

from model_server.backends import Embedder, HashingEmbedder
from model_server.errors import PayloadTooLarge
from model_server.tokens import HashingTokenizer

# Special tokens a tokenizer may add to one input ([CLS], [SEP], a prefix...): generous.
SPECIAL_TOKENS_BOUND = 8


def _bound(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass")) + SPECIAL_TOKENS_BOUND


def _truncated(counts: list[int], limit: int | None) -> int:
    return sum(counts) if limit is None else sum(min(count, limit) for count in counts)


async def request_tokens(texts: list[str], limit: int | None,
                         count: Callable[[list[str]], list[int]], budget: int) -> int:
    """The tokens `texts` cost (each cut at `limit` when truncating): the cheap bound when it
    is within `budget`, else the exact count (off the event loop)."""
    bound = _truncated([_bound(text) for text in texts], limit)
    if bound <= budget:
        return bound
    return _truncated(await asyncio.to_thread(count, texts), limit)


def check_tokens(tokens: int, budget: int) -> None:
    if tokens > budget:
        raise PayloadTooLarge(
            f"the request's inputs are {tokens} tokens, more than the limit of {budget} "
            "tokens per request (max_request_tokens); send fewer or shorter inputs",
            {"tokens": tokens, "max_request_tokens": budget})


def check_floats(floats: int, budget: int, what: str) -> None:
    if floats > budget:
        raise PayloadTooLarge(
            f"the answer would carry {floats} numbers ({what}), more than the limit of "
            f"{budget} per request (max_response_floats); send fewer or shorter inputs",
            {"floats": floats, "max_response_floats": budget})


def token_counter(backend: Embedder) -> Callable[[list[str]], list[int]]:
    """Tokens per input, special ones included, as /embed_all and /tokenize make them (the
    hashing backend's test tokenizer is byte-level there, not the words its /embed counts)."""
    if isinstance(backend, HashingEmbedder):
        tokenizer = HashingTokenizer()
        return lambda texts: [len(tokenizer.tokenize(text, True)) for text in texts]
    return backend.count_tokens


async def check_embed(backend: Embedder, texts: list[str], *, truncate: bool,
                      dimension: int, max_tokens: int, max_floats: int) -> None:
    """/embed and /v1/embeddings: tokens computed, and one vector per input answered."""
    check_floats(len(texts) * dimension, max_floats, f"{len(texts)} inputs x {dimension}")
    limit = backend.max_input_length if truncate else None
    check_tokens(await request_tokens(texts, limit, backend.count_tokens, max_tokens),
                 max_tokens)


async def check_tokenize(backend: Embedder, texts: list[str], *, max_tokens: int) -> None:
    """/tokenize: every token of every input (no truncation), counted before the slower
    tokenization with offsets that the answer needs."""
    check_tokens(await request_tokens(texts, None, token_counter(backend), max_tokens),
                 max_tokens)


async def check_embed_all(backend: Embedder, texts: list[str], *, max_tokens: int,
                          max_floats: int) -> None:
    """/embed_all: tokens computed, and one vector per token answered."""
    dimension = backend.dimension
    # One budget for the cheap bound: within it, both limits hold.
    budget = min(max_tokens, max_floats // dimension)
    tokens = await request_tokens(texts, backend.max_input_length, token_counter(backend),
                                  budget)
    check_tokens(tokens, max_tokens)
    check_floats(tokens * dimension, max_floats, f"{tokens} tokens x {dimension}")
