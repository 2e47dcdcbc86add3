"""Seed 000 — Model Bazaar v1 deploy API under /api/v1/deploy, in its envelope."""

from datetime import UTC, datetime

from aiohttp import web

from edge.auth.authentication import require_secret
from edge.auth.locators import body_field, path_param, query_param
from edge.auth.rules import OPTIONAL_ON_MODEL, OWNER, READ
from edge.errors import ApiError, as_api_error
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.responses import envelope, json_response
from edge.route_spec import RouteSpec
from schemas.auth import Permission
from schemas.bazaar import (
    AssociateOut,
    Envelope,
    FeedbacksData,
    PermissionsData,
    RunData,
    RunRequest,
    StatusData,
    StopData,
    StopRequest,
    UpvoteOut,
)
from schemas.tasks import DeploymentConfig
from service.domain import bazaar, feedback
from service.domain.quotas import QuotaError
from service.keys import REDIS

PREFIX = "/api/v1/deploy"
MAX_PER_EVENT = 1000


async def get_permissions(request: web.Request) -> web.Response:
    """The caller's read/write/owner rights on the model; anonymous callers too."""
    call = call_of(request)
    assert call.model is not None
    exp = call.grant_expires_at or call.principal.expires_at
    data = PermissionsData(read=call.permission >= Permission.read,
                           write=call.permission >= Permission.write,
                           exp=exp.astimezone(UTC) if exp else None,
                           override=call.permission >= Permission.owner)
    ref = request.match_info["model_id"]
    return envelope(f"Successfully fetched user permissions for model with ID {ref}", data)


def _config(body: RunRequest) -> DeploymentConfig:
    try:
        return DeploymentConfig(memory=body.memory, autoscaling_enabled=body.autoscaling_enabled,
                                autoscaling_max=body.autoscaler_max_count,
                                deployment_name=body.deployment_name)
    except ValueError as exc:
        raise ApiError(422, f"invalid request: {exc}") from None


def quota_envelope(exc: QuotaError) -> web.Response:
    """Seed 000's envelope for a refused deploy: the figures are its data (and, as on
    every surface, its detail)."""
    status = as_api_error(exc).status
    return json_response({"status_code": status, "message": exc.message,
                          "data": exc.figures, "detail": exc.figures}, status)


async def run(request: web.Request) -> web.Response:
    """Deploy the model (owner only); genai_key is kept encrypted and given to replicas."""
    call = call_of(request)
    assert call.model is not None
    body: RunRequest = call.body
    config = _config(body)
    pool = request.app[PG]
    if body.genai_key is not None:
        secret = require_secret(request.app[SETTINGS])
        await bazaar.store_secrets(pool, secret, call.model, {"genai_key": body.genai_key})
    try:
        await bazaar.deploy(pool, request.app[REDIS], call.model, config,
                            call.principal.user_id, request.app[SETTINGS])
    except QuotaError as exc:
        return quota_envelope(exc)
    data = RunData(status="queued", model_identifier=body.model_identifier,
                   model_id=str(call.model.id))
    return envelope("Deployment is in-progress", data, 202)


def _per_event_count(request: web.Request) -> int:
    try:
        count = int(request.query.get("per_event_count", "5"))
    except ValueError:
        raise ApiError(422, "invalid request: per_event_count must be an integer") from None
    if not 1 <= count <= MAX_PER_EVENT:
        raise ApiError(422, f"invalid request: per_event_count must be 1..{MAX_PER_EVENT}")
    return count


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def feedbacks(request: web.Request) -> web.Response:
    """The newest upvote and associate events of the model (owner only)."""
    model = call_of(request).model
    assert model is not None
    count = _per_event_count(request)
    upvotes, associations = await feedback.latest(request.app[PG], model.id, count)
    data = FeedbacksData(
        upvote=[UpvoteOut(query=f.payload.get("query", ""),
                          reference_text=f.payload.get("reference_text"),
                          reference_id=f.payload.get("reference_id"),
                          timestamp=_stamp(f.created_at)) for f in upvotes],
        associate=[AssociateOut(source=f.payload.get("source", ""),
                                target=f.payload.get("target", ""),
                                timestamp=_stamp(f.created_at)) for f in associations],
    )
    return envelope("Successfully retrieved the feedbacks", data)


async def status(request: web.Request) -> web.Response:
    """Deployment status with every message of the current deployment."""
    model = call_of(request).model
    assert model is not None
    current = await bazaar.status(request.app[PG], model, call_of(request).permission)
    data = StatusData(deploy_status=current.status,
                      messages=current.messages, model_id=str(model.id),
                      replicas_current=current.replicas_current,
                      replicas_desired=current.replicas_desired)
    return envelope("Successfully got the deployment status", data)


async def stop(request: web.Request) -> web.Response:
    """Undeploy (owner only); 400 while an active deployment depends on the model."""
    call = call_of(request)
    assert call.model is not None
    await bazaar.undeploy(request.app[PG], request.app[REDIS], call.model,
                          call.principal.user_id, request.app[SETTINGS])
    return envelope("Service is shutting down",
                    StopData(status="queued", model_id=str(call.model.id)), 202)


async def logs(request: web.Request) -> web.Response:
    """Recent log lines of every replica, flattened (secrets taken out by the worker)."""
    call = call_of(request)
    assert call.model is not None
    entries = await bazaar.replica_logs(request.app[REDIS], call.model.id,
                                        bazaar.LOG_TAIL_DEFAULT, str(call.principal.user_id))
    lines = [line for e in entries for stream in ("stdout", "stderr")
             for line in (e.get(stream) or "").splitlines()]
    return envelope("Successfully got the deployment logs.", lines)


ROUTES = [
    RouteSpec("GET", PREFIX + "/permissions/{model_id:[^/]+(?:/[^/]+)?}", get_permissions,
              OPTIONAL_ON_MODEL, None, Envelope[PermissionsData], path_param("model_id"),
              summary="Caller's permissions on a model"),
    RouteSpec("POST", PREFIX + "/run", run, OWNER, RunRequest, Envelope[RunData],
              body_field("model_identifier"), 202, summary="Deploy a model"),
    RouteSpec("GET", PREFIX + "/feedbacks", feedbacks, OWNER, None, Envelope[FeedbacksData],
              query_param("model_identifier"), summary="Recent feedback",
              query=(("model_identifier", True),
                     ("per_event_count", False,
                      {"type": "integer", "minimum": 1, "maximum": MAX_PER_EVENT}))),
    RouteSpec("GET", PREFIX + "/status", status, READ, None, Envelope[StatusData],
              query_param("model_identifier"), summary="Deployment status",
              query=(("model_identifier", True),)),
    RouteSpec("POST", PREFIX + "/stop", stop, OWNER, StopRequest, Envelope[StopData],
              body_field("model_identifier"), 202, summary="Stop a deployment"),
    RouteSpec("GET", PREFIX + "/logs", logs, READ, None, Envelope[list[str]],
              query_param("model_identifier"), summary="Deployment logs",
              query=(("model_identifier", True),)),
]
