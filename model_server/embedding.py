"""Request validation and the embedding calls behind the HTTP routes."""

import asyncio
import base64
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from model_server.backends import Embedder, Embeddings, Vectors
from model_server.batcher import Batcher
from model_server.errors import InvalidRequest, MalformedRequest, PayloadTooLarge
from model_server.lanes import lane_of, timeout_of

Model = TypeVar("Model", bound=BaseModel)


Inputs = str | list[StrictInt] | list[str | list[StrictInt]]
Ids = list[StrictInt] | list[list[StrictInt]]
TruncationDirection = Literal["right", "left", "Right", "Left"]


class TeiInputs(BaseModel):
    """Fields TEI's embedding routes share: `inputs` texts or token ids, one or a batch."""

    model_config = ConfigDict(extra="ignore")

    inputs: Inputs
    # None: the server's auto-truncate, which is on (inputs longer than the model's
    # maximum are truncated); false refuses an over-long input with a 413.
    truncate: StrictBool | None = None
    truncation_direction: TruncationDirection = "right"
    prompt_name: StrictStr | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        return _texts_or_ids(value)


class EmbedRequest(TeiInputs):
    """TEI's ``POST /embed`` (and ``POST /``) body."""

    normalize: StrictBool = True


class EmbedAllRequest(TeiInputs):
    """TEI's ``POST /embed_all`` body: one vector per token."""


class TokenizeRequest(BaseModel):
    """TEI's ``POST /tokenize`` body."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        return _texts_only(value)


class DecodeRequest(BaseModel):
    """TEI's ``POST /decode`` body."""

    model_config = ConfigDict(extra="ignore")

    ids: Ids
    skip_special_tokens: StrictBool = True

    @field_validator("ids", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty list of token ids or of lists of them")
        if all(isinstance(item, list) for item in value):
            for index, item in enumerate(value):
                _check_id_list(item, f"item {index}")
            return value
        _check_id_list(value, "list")
        return value


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body: `input` a string, a list of strings, a list
    of token ids or a list of lists of token ids."""

    model_config = ConfigDict(extra="ignore")

    input: Inputs
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, gt=0)
    user: StrictStr | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        return _texts_or_ids(value)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_id_list(value: Any, what: str) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of token ids")
    for index, item in enumerate(value):
        if not _is_id(item) or item < 0:
            raise ValueError(f"{what}: token {index} must be a non-negative integer")


def _texts_or_ids(value: Any) -> Any:
    """A string, a list of token ids, or a list whose items are each a string or a list
    of token ids; anything else is refused with one clear message."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(
            f"must be a string, a list of strings or token ids, not {type(value).__name__}")
    if value and _is_id(value[0]):
        _check_id_list(value, "a token id list")
        return value
    for index, item in enumerate(value):
        if isinstance(item, list):
            _check_id_list(item, f"item {index}")
        elif not isinstance(item, str):
            raise ValueError(f"item {index} must be a string or a list of token ids, "
                             f"not {type(item).__name__}")
    return value


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


def as_inputs(inputs: Inputs, field: str, max_client_batch_size: int) -> list[str | list[int]]:
    """The inputs as a non-empty batch: a lone string or token-id list is a batch of one."""
    if isinstance(inputs, str) or (inputs and _is_id(inputs[0])):
        batch: list[Any] = [inputs]
    else:
        batch = list(inputs)
    return as_texts(batch, field, max_client_batch_size)


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


def as_texts(inputs: str | list[Any], field: str, max_client_batch_size: int) -> list[Any]:
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
    backend: Embedder, batcher: Batcher, texts: list[str], *, truncate: bool,
    headers: Mapping[str, str] | None = None,
) -> Embeddings:
    """Embed through the batcher, in the lane and within the timeout the request's
    ``headers`` name (model_server/lanes.py); without ``truncate`` an over-long input is
    refused first."""
    headers = headers or {}
    lane, timeout_s = lane_of(headers), timeout_of(headers)
    if not truncate:
        await _check_lengths(backend, texts)
    return await batcher.embed(texts, lane, timeout_s)


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
