"""Seed 001 — Model Bazaar v2 deploy API under /api/v2/deploy, and /api/v2/train."""

from aiohttp import web

from edge.auth.authentication import require_secret
from edge.auth.locators import path_param
from edge.auth.rules import JOB, JOB_MODEL, OWNER, READ, UPDATE
from edge.errors import ApiError
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.parsing import idempotency_key
from edge.responses import json_response
from edge.route_spec import RouteSpec
from schemas.bazaar import (
    DeployRequest,
    Empty,
    LogRequest,
    ReplicaLogs,
    SaveRequest,
    SaveResponse,
    StatusResponse,
    TrainUpdateStatusRequest,
    UpdateStatusRequest,
)
from schemas.tokens import issue_update_token
from service.domain import bazaar, model_sources
from service.keys import REDIS

PREFIX = "/api/v2/deploy"
MODEL = "{model_id:[^/]+(?:/[^/]+)?}"
EMPTY = Empty()


def _tail(request: web.Request) -> int:
    try:
        tail = int(request.query.get("tail", bazaar.LOG_TAIL_DEFAULT))
    except ValueError:
        raise ApiError(422, "invalid request: tail must be an integer") from None
    return max(1, min(tail, 10_000))


async def deploy(request: web.Request) -> web.Response:
    """Deploy the model (owner only); all settings optional."""
    call = call_of(request)
    assert call.model is not None
    config: DeployRequest = call.body
    await bazaar.deploy(request.app[PG], request.app[REDIS], call.model, config,
                        call.principal.user_id, request.app[SETTINGS],
                        idempotency_key(request))
    return json_response(EMPTY)


async def undeploy(request: web.Request) -> web.Response:
    """Undeploy the model (owner only)."""
    call = call_of(request)
    assert call.model is not None
    await bazaar.undeploy(request.app[PG], request.app[REDIS], call.model,
                          call.principal.user_id, request.app[SETTINGS])
    return json_response(EMPTY)


async def status(request: web.Request) -> web.Response:
    """{status, errors, warnings} of the model's current deployment."""
    model = call_of(request).model
    assert model is not None
    current = await bazaar.status(request.app[PG], model, call_of(request).permission)
    return json_response(StatusResponse(status=current.status,
                                        errors=current.errors, warnings=current.warnings,
                                        replicas_current=current.replicas_current,
                                        replicas_desired=current.replicas_desired,
                                        generation=current.generation,
                                        revision=current.revision,
                                        warm_generation=current.warm_generation))


async def logs(request: web.Request) -> web.Response:
    """Recent stdout and stderr of every replica, one entry each; READ, as seed 001 says:
    the worker takes the deployment's secrets out of them (worker/log_redaction.py)."""
    call = call_of(request)
    assert call.model is not None
    entries = await bazaar.replica_logs(request.app[REDIS], call.model.id, _tail(request),
                                        str(call.principal.user_id))
    return json_response([ReplicaLogs(stdout=e.get("stdout", ""), stderr=e.get("stderr", ""))
                          for e in entries])


async def save(request: web.Request) -> web.Response:
    """A new model to save this deployment into, and a one-hour token to update it."""
    call = call_of(request)
    assert call.model is not None
    body: SaveRequest = call.body
    owner_id = call.principal.user_id or call.model.owner_id
    # The copy keeps the source: a new owner must be allowed to name its image and location.
    if owner_id != call.model.owner_id:
        await model_sources.check_stored(request.app[PG], request.app[SETTINGS],
                                         call.model.source, owner_id, call.principal.is_admin)
    saved = await bazaar.save_copy(request.app[PG], request.app[SETTINGS], call.model,
                                   owner_id, body.model_name)
    token = issue_update_token(require_secret(request.app[SETTINGS]), saved.id)
    return json_response(SaveResponse(model_id=str(saved.id), update_token=token))


async def update_status(request: web.Request) -> web.Response:
    """The deploy job reports its deployment's status (and model metadata)."""
    call = call_of(request)
    assert call.model is not None
    body: UpdateStatusRequest = call.body
    await bazaar.update_deploy_status(request.app[PG], request.app[SETTINGS], call.model,
                                      body.status, body.metadata)
    return json_response(EMPTY)


async def log_message(request: web.Request) -> web.Response:
    """The deploy job records a warning or an error for its deployment."""
    call = call_of(request)
    assert call.model is not None
    body: LogRequest = call.body
    await bazaar.log_event(request.app[PG], request.app[SETTINGS], call.model, body.level,
                           body.message, call.principal.generation)
    return json_response(EMPTY)


async def train_update_status(request: web.Request) -> web.Response:
    """The save job marks the saved model's train status with its update token."""
    call = call_of(request)
    assert call.model is not None
    body: TrainUpdateStatusRequest = call.body
    await bazaar.update_train_status(request.app[PG], request.app[SETTINGS], call.model,
                                     body.status, body.metadata)
    return json_response(EMPTY)


ROUTES = [
    # Fixed paths first: /update-status and /log must not be read as model ids.
    RouteSpec("POST", f"{PREFIX}/update-status", update_status, JOB, UpdateStatusRequest,
              Empty, summary="Update deployment status (job token)"),
    RouteSpec("POST", f"{PREFIX}/log", log_message, JOB, LogRequest, Empty,
              summary="Log a deployment warning or error (job token)"),
    RouteSpec("GET", f"{PREFIX}/log", log_message, JOB, LogRequest, Empty,
              summary="Seed 001 lists /log as GET with a body; accepted too"),
    RouteSpec("POST", "/api/v2/train/update-status", train_update_status, UPDATE,
              TrainUpdateStatusRequest, Empty, summary="Update train status (update token)"),
    RouteSpec("GET", f"{PREFIX}/{MODEL}/status", status, READ, None, StatusResponse,
              path_param("model_id"), summary="Deployment status"),
    RouteSpec("GET", f"{PREFIX}/{MODEL}/status-internal", status, JOB_MODEL, None,
              StatusResponse, path_param("model_id"), summary="Deployment status (job token)"),
    RouteSpec("GET", f"{PREFIX}/{MODEL}/logs", logs, READ, None, list[ReplicaLogs],
              path_param("model_id"), summary="Replica logs"),
    RouteSpec("POST", f"{PREFIX}/{MODEL}/save", save, READ, SaveRequest, SaveResponse,
              path_param("model_id"), summary="Create a model to save the deployment into"),
    RouteSpec("POST", f"{PREFIX}/{MODEL}", deploy, OWNER, DeployRequest, Empty,
              path_param("model_id"), summary="Deploy a model", body_optional=True),
    RouteSpec("DELETE", f"{PREFIX}/{MODEL}", undeploy, OWNER, None, Empty,
              path_param("model_id"), summary="Undeploy a model"),
]
