"""Request validation and the embedding calls behind the HTTP routes."""

import asyncio
import base64
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from model_server.backends import Embedder, Embeddings, Vectors
from model_server.batcher import Batcher
from model_server.errors import InvalidRequest, MalformedRequest, PayloadTooLarge

Model = TypeVar("Model", bound=BaseModel)


class EmbedRequest(BaseModel):
    """TEI's ``POST /embed`` body."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    normalize: StrictBool = True
    truncate: StrictBool = True

    @field_validator("inputs", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        return _texts_only(value)


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body (token-id inputs are not supported)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        return _texts_only(value)


def _texts_only(value: Any) -> Any:
    """Refuse anything but a string or a list of strings, with one clear message."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"must be a string or a list of strings, not {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"item {index} must be a string, not {type(item).__name__}")
    return value


async def parse_body(request: web.Request, model: type[Model], max_bytes: int) -> Model:
    """Read and validate a JSON body; every failure is a 4xx ModelServerError."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(
            f"request body of {length} bytes is larger than the limit of {max_bytes} bytes",
            {"max_body_bytes": max_bytes},
        )
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise InvalidRequest(_describe(errors), errors) from exc


def _describe(errors: list[Any]) -> str:
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"invalid request body: `{where}` {message}{more}"


def as_texts(inputs: str | list[str], field: str, max_client_batch_size: int) -> list[str]:
    """The inputs as a non-empty list no longer than the client batch limit."""
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
        raise InvalidRequest(f"`{field}` must not be an empty list")
    if len(texts) > max_client_batch_size:
        raise PayloadTooLarge(
            f"{len(texts)} inputs is more than the maximum of {max_client_batch_size} per request",
            {"inputs": len(texts), "max_client_batch_size": max_client_batch_size},
        )
    return texts


async def embed_texts(
    backend: Embedder, batcher: Batcher, texts: list[str], *, truncate: bool
) -> Embeddings:
    """Embed through the batcher; without ``truncate`` an over-long input is refused first."""
    if not truncate:
        await _check_lengths(backend, texts)
    return await batcher.embed(texts)


async def _check_lengths(backend: Embedder, texts: list[str]) -> None:
    counts = await asyncio.to_thread(backend.count_tokens, texts)
    limit = backend.max_input_length
    for index, count in enumerate(counts):
        if count > limit:
            raise PayloadTooLarge(
                f"input {index} is {count} tokens long, more than the maximum of {limit}; "
                "send truncate=true to truncate it",
                {"index": index, "tokens": count, "max_input_length": limit},
            )


def tei_body(vectors: Vectors) -> bytes:
    """A JSON list of lists. orjson writes float32 rows straight from the array, each
    number in its shortest round-trip form: a third of the event loop's time went to
    ``json.dumps(vectors.tolist())`` at 32 concurrent clients."""
    return orjson.dumps(np.ascontiguousarray(vectors), option=orjson.OPT_SERIALIZE_NUMPY)


def openai_body(
    embeddings: Embeddings, vectors: Vectors, model_id: str, encoding: Literal["float", "base64"]
) -> bytes:
    rows: list[Any] = (
        list(np.ascontiguousarray(vectors)) if encoding == "float" else _base64_rows(vectors)
    )
    tokens = sum(embeddings.token_counts)
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": row}
                for index, row in enumerate(rows)
            ],
            "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _base64_rows(vectors: Vectors) -> list[str]:
    little = vectors.astype("<f4", copy=False)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
