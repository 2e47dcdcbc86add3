"""JSON responses from pydantic models, and seed 000's {status_code, message, data} envelope."""

from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def json_response(value: BaseModel | list[Any] | dict[str, Any], status: int = 200) -> web.Response:
    """Serialise pydantic models (or lists and dicts of them) with their JSON encoders."""
    if isinstance(value, BaseModel):
        text = value.model_dump_json()
    else:
        text = _ANY.dump_json(value).decode()
    return web.Response(text=text, status=status, content_type="application/json")


def envelope(message: str, data: Any, status: int = 200) -> web.Response:
    """Seed 000's success envelope."""
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return json_response({"status_code": status, "message": message, "data": payload}, status)
