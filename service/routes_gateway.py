"""Data plane: OpenAI-style and TEI passthrough embeddings through the gateway."""

from typing import Any

from aiohttp import web

from service.auth import RouteSpec, register
from service.errors import ApiError
from service.keys import GATEWAY
from service.parsing import read_json


async def openai_embeddings(request: web.Request) -> web.Response:
    """POST /v1/embeddings: `model` names the deployment (its name or owner/name)."""
    body = await read_json(request)
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        raise ApiError(422, "invalid request: model: a deployment name or owner/name is required")
    raw = await request.read()
    return await request.app[GATEWAY].forward(model, "/v1/embeddings", raw, dict(request.headers))


async def serve_embed(request: web.Request) -> web.Response:
    """POST /serve/{name}/embed: the TEI /embed contract, passed through."""
    raw = await request.read()
    if not raw:
        raise ApiError(400, "request body is empty; expected a JSON object")
    name = request.match_info["name"]
    return await request.app[GATEWAY].forward(name, "/embed", raw, dict(request.headers))


async def _body_model(request: web.Request, body: Any) -> str:
    """Where /v1/embeddings names its deployment (validated again by the handler)."""
    data = await read_json(request)
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else ""


async def _path_name(request: web.Request, body: Any) -> str:
    return request.match_info["name"]


ROUTES = [
    RouteSpec("POST", "/v1/embeddings", openai_embeddings, "inference", locate=_body_model,
              summary="OpenAI-style embeddings"),
    RouteSpec("POST", "/serve/{name}/embed", serve_embed, "inference", locate=_path_name,
              summary="TEI /embed passthrough"),
]


def setup(app: web.Application) -> None:
    register(app, ROUTES)
