"""GET /openapi.json, generated from the route table every surface registers.

Each RouteSpec names its request and response models, so the document cannot drift from
the routes: a route added to a surface appears here with its schemas and security.
"""

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from edge.auth.rules import Caller
from edge.openapi_examples import add_examples
from edge.route_spec import RouteSpec
from edge.routes import ROUTE_TABLE
from schemas.tasks import ErrorBody

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_REF = "#/components/schemas/{model}"
_ERRORS = {"400": "malformed request", "401": "missing, malformed or expired token",
           "403": "not allowed", "404": "not found", "409": "conflict",
           "413": "body too large", "422": "invalid request", "415": "unsupported media type",
           "429": "too many attempts",
           "503": "dependency unavailable"}


def _schema(model: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of a model or type; nested definitions go to components."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
    else:
        schema = TypeAdapter(model).json_schema(ref_template=_REF, mode="serialization")
    defs.update(schema.pop("$defs", {}))
    return schema


def _request_schema(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF, mode="validation")
    defs.update(schema.pop("$defs", {}))
    return schema


def _operation(spec: RouteSpec, defs: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "success"}
    if spec.response_model is not None:
        ok["content"] = {"application/json": {"schema": _schema(spec.response_model, defs)}}
    error = {"$ref": _REF.format(model="ErrorBody")}
    responses = {str(spec.status): ok} | {
        code: {"description": text, "content": {"application/json": {"schema": error}}}
        for code, text in _ERRORS.items()
    }
    op: dict[str, Any] = {
        "operationId": f"{spec.method.lower()}_{spec.handler.__name__}",
        "summary": spec.summary or (spec.handler.__doc__ or "").strip().split("\n")[0],
        "responses": responses,
        "parameters": [{"name": name, "in": "path", "required": True,
                        "schema": {"type": "string"}} for name in _PARAM.findall(spec.path)]
        + [{"name": name, "in": "query", "required": required, "schema": {"type": "string"}}
           for name, required in spec.query],
    }
    if spec.access.caller is not Caller.anyone:
        # A lenient route also takes a call without a token.
        optional = spec.access.caller is Caller.lenient
        op["security"] = [{"bearer": []}, {}] if optional else [{"bearer": []}]
    if spec.request_model is not None:
        op["requestBody"] = {"required": not spec.body_optional, "content": {
            "application/json": {"schema": _request_schema(spec.request_model, defs)}}}
    elif spec.raw_body:
        op["requestBody"] = {"required": True, "content": {
            media: {"schema": {"type": "string", "format": "binary"}} for media in spec.raw_body}}
    return op


def build(routes: list[RouteSpec]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for these routes."""
    defs: dict[str, Any] = {"ErrorBody": ErrorBody.model_json_schema()}
    paths: dict[str, dict[str, Any]] = {}
    for spec in routes:
        path = _PARAM.sub(r"{\1}", spec.path)
        operation = _operation(spec, defs)
        add_examples(operation, spec.method, path)
        paths.setdefault(path, {})[spec.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Greenroom", "version": "0.1.0",
                 "description": "Asynchronous green deployments of embedding models"},
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
    }


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document of every route."""
    return web.json_response(build(request.app[ROUTE_TABLE]))
