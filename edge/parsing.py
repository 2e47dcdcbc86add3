"""Turn request bodies into pydantic models, and their failures into 400/422 errors."""

import json
import re
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from edge.errors import ApiError

M = TypeVar("M", bound=BaseModel)


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


async def read_json(request: web.Request) -> Any:
    """The body as JSON; 400 if it is not JSON, 413 if it is too large."""
    raw = await request.read()
    if not raw:
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "request body is not valid JSON", str(exc)) from None
    except RecursionError:  # deeper than the decoder goes
        raise _too_deep() from None
    return data


# No request of the documents nests deeper than a few levels; the walk below stops there
# (past it, its recursion would meet Python's limit: a 500).
MAX_NESTING = 64


def _too_deep() -> ApiError:
    return ApiError(422, f"request body is nested deeper than {MAX_NESTING} levels")


def _has_nul(value: Any) -> bool:
    """Postgres text and jsonb cannot hold U+0000; what a request keeps must not hold it."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_has_nul(v) for v in value)
    return False


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _as_json_schema_reads(value: Any, depth: int = 1) -> Any:
    """The body as JSON Schema reads it: `integer` takes 2.0 as it takes 2, and a lone
    surrogate escape (`"\\ud800"`, which no UTF-8 text and so no Postgres column can
    hold) reads as U+FFFD, as a WHATWG decoder reads it. 422 past MAX_NESTING levels."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict | list) and depth > MAX_NESTING:
        raise _too_deep()
    if isinstance(value, dict):
        return {_as_json_schema_reads(k): _as_json_schema_reads(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json_schema_reads(v, depth + 1) for v in value]
    return value


def refuse_nul_in_url(request: web.Request) -> None:
    """A NUL in the path or the query (`%00`) would reach Postgres as one in the body would:
    refused at the door for every route (review L2: a path's NUL was a 500)."""
    if "\x00" in request.path or any("\x00" in k or "\x00" in v
                                      for k, v in request.query.items()):
        raise ApiError(422, "invalid request: the path and query must not contain the NUL "
                            "character")


def validate(model: type[M], data: Any) -> M:
    """The body as `model`, validated as the document states it: JSON types taken strictly
    (no `0` for false, no `"5"` for 5, as the published JSON Schema), and no NUL in any
    string the model keeps (the document's string patterns exclude it; a field the model
    ignores is not looked at)."""
    try:
        parsed = model.model_validate_json(json.dumps(_as_json_schema_reads(data)), strict=True)
    except ValidationError as exc:
        problems = _problems(exc)
        first = problems[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(422, f"invalid request: {where}: {first['msg']}", problems) from None
    if _has_nul(parsed.model_dump()):
        raise ApiError(422, "invalid request: strings must not contain the NUL character")
    return parsed


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read and validate the body; errors are the JSON error body, never a 5xx."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "request body must be a JSON object")
    return validate(model, data)


# As the body's `id` (schemas/tasks.py TaskRequest): a longer key would pass Postgres's index
# row limit at the insert and come back as a 500.
MAX_IDEMPOTENCY_KEY = 200


def idempotency_key(request: web.Request) -> str | None:
    """The `Idempotency-Key` header; 422 if it is empty or longer than the body's `id`."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ApiError(422, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                       {"header": "Idempotency-Key", "length": len(key)})
    return key
