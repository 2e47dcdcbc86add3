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

# A route that takes an idempotency key (the body's `id` or the `Idempotency-Key` header)
# refuses the key reused with another request, as the IETF Idempotency-Key draft says.
_REUSED_KEY = ("invalid request, or an idempotency key used before with a different request "
               "(detail.task_id: the task it made)")


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


def _query_parameter(name: str, required: bool,
                     schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A query parameter: a string (not empty if required) unless its schema says more."""
    default: dict[str, Any] = {"type": "string"} | ({"minLength": 1} if required else {})
    return {"name": name, "in": "query", "required": required, "schema": schema or default}


# Postgres text cannot hold U+0000, so no string the API keeps may: the request refuses it
# (service/web/parsing.py), and the document says so on every string it describes.
NO_NUL = "^[^\\u0000]*$"


def _refuse_nul(schema: Any) -> None:
    """Add NO_NUL to each string schema (and each object's property names) under `schema`
    that has no pattern, enum or const of its own: what a request keeps holds no NUL."""
    if isinstance(schema, list):
        for item in schema:
            _refuse_nul(item)
        return
    if not isinstance(schema, dict):
        return
    types = schema.get("type")
    is_string = types == "string" or (isinstance(types, list) and "string" in types)
    if is_string and not {"pattern", "enum", "const", "format"} & set(schema):
        schema["pattern"] = NO_NUL
    if isinstance(schema.get("additionalProperties"), dict):
        schema.setdefault("propertyNames", {"pattern": NO_NUL})
    for key, value in schema.items():
        if key not in ("example", "examples", "default", "const", "enum"):
            _refuse_nul(value)


def _referenced(schema: Any, defs: dict[str, Any], found: set[str] | None = None) -> set[str]:
    """The names of the components `schema` refers to, directly or through others."""
    found = set() if found is None else found
    if isinstance(schema, list):
        for item in schema:
            _referenced(item, defs, found)
    elif isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and (name := ref.rsplit("/", 1)[-1]) not in found:
            found.add(name)
            _referenced(defs.get(name), defs, found)
        for value in schema.values():
            _referenced(value, defs, found)
    return found


def _operation(spec: RouteSpec, defs: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "success"}
    if spec.response_model is not None:
        ok["content"] = {spec.response_media: {"schema": _schema(spec.response_model, defs)}}
        ok["content"] |= {media: {"schema": {"type": "string", "format": "binary"}}
                          for media in spec.response_alternatives}
    error = {"$ref": _REF.format(model="ErrorBody")}
    replay = {str(spec.replay_status): ok | {"description": "the task an earlier request with "
                                                          "this idempotency key made"}}
    errors = _ERRORS | ({"422": _REUSED_KEY} if spec.replay_status else {})
    responses = {str(spec.status): ok} | (replay if spec.replay_status else {}) | {
        code: {"description": text, "content": {"application/json": {"schema": error}}}
        for code, text in errors.items()
    }
    op: dict[str, Any] = {
        "operationId": f"{spec.method.lower()}_{spec.handler.__name__}",
        "summary": spec.summary or (spec.handler.__doc__ or "").strip().split("\n")[0],
        "responses": responses,
        "parameters": [{"name": name, "in": "path", "required": True,
                        "schema": {"type": "string", "minLength": 1}}
                       for name in _PARAM.findall(spec.path)]
        + [_query_parameter(*param) for param in spec.query],
    }
    if spec.access.caller is not Caller.anyone:
        # A lenient route, and one whose model decides (a public deployment's inference),
        # also takes a call without a token.
        optional = spec.access.caller in (Caller.lenient, Caller.token_if_any)
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
    requests = [part for methods in paths.values() for operation in methods.values()
                for part in (operation.get("parameters"), operation.get("requestBody"))]
    for part in requests + [defs[name] for name in _referenced(requests, defs)]:
        _refuse_nul(part)
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
