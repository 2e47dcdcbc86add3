"""The JSON routes the console needs beyond the other surfaces, and its change stream.

Thin handlers over db/ reads, guarded and documented like every other route.
"""

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

from aiohttp import web

from db import tasks
from edge.auth.authentication import authenticate
from edge.auth.locators import CALLER, MISSING, path_param
from edge.auth.principal_cache import PRINCIPALS
from edge.auth.rules import READ, USER
from edge.errors import ApiError
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.responses import json_response
from edge.route_spec import RouteSpec
from schemas.auth import Principal
from schemas.console import (
    Change,
    DeploymentDetail,
    DeploymentSummary,
    ReplicaLogOut,
    StreamInfo,
    TaskDetail,
)
from schemas.errors import NotFound, Unauthorized
from service.console import overview, traffic
from service.console.changes import CLOSING, FEED, RESYNC
from service.domain import bazaar
from service.keys import REDIS

MODEL = "{model_id:[^/]+(?:/[^/]+)?}"
HEARTBEAT_S = 15.0
# A stream ends after this long (or when the caller's token expires); the page reconnects.
MAX_STREAM_S = 300.0
PERMISSION_CACHE_S = 5.0  # at most; never longer than access_cache_ttl_s
ACCESS_CHANGED = "access_changed"
_LOCATED_TASK = web.RequestKey("console_task", tasks.Task)


async def list_deployments(request: web.Request) -> web.Response:
    """Every deployment of a model the caller can read, with replicas ready and wanted and
    the requests per second and latency the gateways report carrying to it."""
    rates = await traffic.current(request.app, request.app[REDIS])
    found = await overview.list_deployments(request.app[PG], call_of(request).principal, rates,
                                            request.app[traffic.RATES].latency_per_model())
    return json_response(found)


async def show_deployment(request: web.Request) -> web.Response:
    """One deployment: replicas, generations, events and recent tasks."""
    call = call_of(request)
    assert call.model is not None
    rates = await traffic.current(request.app, request.app[REDIS])
    return json_response(await overview.deployment_detail(
        request.app[PG], call.model, call.permission, rates,
        request.app[traffic.RATES].latency_per_model()))


def _tail(request: web.Request) -> int:
    try:
        tail = int(request.query.get("tail", "200"))
    except ValueError:
        raise ApiError(422, "invalid request: tail must be an integer") from None
    return max(1, min(tail, 2000))


async def replica_logs(request: web.Request) -> web.Response:
    """The newest log lines of each live replica, named by replica (secrets taken out)."""
    call = call_of(request)
    assert call.model is not None
    entries = await bazaar.replica_logs(request.app[REDIS], call.model.id, _tail(request),
                                        str(call.principal.user_id))
    return json_response([ReplicaLogOut.model_validate(e) for e in entries])


async def show_task(request: web.Request) -> web.Response:
    """A task of any kind with its timestamps and events."""
    call = call_of(request)
    return json_response(await overview.task_detail(request.app[PG], request[_LOCATED_TASK],
                                                    call.permission))


async def _task_model(request: web.Request, body: object) -> str:
    try:
        task = await tasks.get(request.app[PG], UUID(request.match_info["task_id"]))
    except ValueError:
        task = None
    missing = NotFound(f"task {request.match_info['task_id']!r} not found")
    if task is None:
        raise missing
    caller = request[CALLER]
    if task.kind == "embed" and not (caller.is_admin or caller.user_id == task.created_by):
        raise missing  # an embed job's task is its user's alone (issue 30)
    request[_LOCATED_TASK] = task
    request[MISSING] = missing  # a task of a model the caller cannot read: the same 404
    return str(task.model_id)


class _Readable:
    """The stream caller's read access per model, looked up at most every few seconds
    (never longer than `access_cache_ttl_s`), forgotten when access changes."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.principal: Principal = call_of(request).principal
        self._ttl_s = min(PERMISSION_CACHE_S, request.app[SETTINGS].access_cache_ttl_s)
        self._seen: dict[UUID, tuple[bool, float]] = {}

    async def __call__(self, model_id: UUID) -> bool:
        hit = self._seen.get(model_id)
        if hit is not None and time.monotonic() - hit[1] < self._ttl_s:
            return hit[0]
        ok = await overview.readable(self._request.app[PG], self.principal, model_id)
        self._seen[model_id] = (ok, time.monotonic())
        return ok

    async def recheck(self) -> bool:
        """Access changed somewhere: is the caller's token still good? (Its principal and
        per-model answers are looked up afresh.)"""
        self._seen.clear()
        try:
            self.principal = await authenticate(self._request)
        except Unauthorized:
            return False
        return self.principal.is_user


def _tell_on_access_change(queue: "asyncio.Queue[Change | str]") -> Callable[[], None]:
    def tell() -> None:
        try:
            queue.put_nowait(ACCESS_CHANGED)
        except asyncio.QueueFull:  # the stream is behind anyway: resync after the check
            _drain(queue)
            queue.put_nowait(ACCESS_CHANGED)
            queue.put_nowait(RESYNC)
    return tell


def _drain(queue: "asyncio.Queue[Change | str]") -> None:
    while not queue.empty():
        queue.get_nowait()


def _stream_deadline(request: web.Request) -> float:
    """Now + the caller's `timeout` (at most MAX_STREAM_S), cut at the token's expiry."""
    try:
        left = float(request.query.get("timeout", MAX_STREAM_S))
    except ValueError:
        left = -1
    if not 0 < left <= MAX_STREAM_S:
        raise ApiError(422, f"invalid request: timeout must be a number of seconds in "
                       f"(0, {MAX_STREAM_S:g}]")
    expires = call_of(request).principal.expires_at
    if expires is not None:
        left = min(left, (expires - datetime.now(UTC)).total_seconds())
    return time.monotonic() + max(left, 0)


async def _send(response: web.StreamResponse, readable: _Readable,
                item: Change | str) -> bool:
    """Write what `item` calls for; False when the stream must end."""
    if item == CLOSING:
        return False
    if item == ACCESS_CHANGED:
        if not await readable.recheck():
            await response.write(b"event: unauthorized\ndata: {}\n\n")
            return False
    elif item == RESYNC:
        await response.write(b"event: resync\ndata: {}\n\n")
    elif not isinstance(item, str) and await readable(item.model_id):
        await response.write(f"event: change\ndata: {item.model_dump_json()}\n\n".encode())
    return True


async def changes(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `change` for every row change the caller may read, `resync`
    when some may have been missed, `unauthorized` (then the end) once the caller's token
    is revoked. Send the bearer token as for every route. At most a few streams per user
    (`changes_max_streams_per_user`) and per API process: past that, 429."""
    readable, deadline = _Readable(request), _stream_deadline(request)
    user_id = call_of(request).principal.user_id
    assert user_id is not None
    with request.app[FEED].stream_slot(user_id):
        return await _stream(request, readable, deadline)


async def _stream(request: web.Request, readable: "_Readable",
                  deadline: float) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    principals = request.app.get(PRINCIPALS)
    tell: Callable[[], None] | None = None
    try:
        with request.app[FEED].subscribe() as queue:
            # A key revoked or a grant changed: the stream re-checks its caller at once.
            tell = _tell_on_access_change(queue)
            if principals is not None:
                principals.listeners.add(tell)
            live = "true" if request.app[FEED].connected.is_set() else "false"
            await response.write(f"retry: 2000\nevent: hello\ndata: {{\"live\": {live}}}\n\n"
                                 .encode())
            while (left := deadline - time.monotonic()) > 0:
                try:
                    item = await asyncio.wait_for(queue.get(), min(HEARTBEAT_S, left))
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if not await _send(response, readable, item):
                    break
    except ConnectionResetError:
        pass  # the page went away
    finally:
        if principals is not None and tell is not None:
            principals.listeners.discard(tell)
    return response


ROUTES = [
    RouteSpec("GET", "/api/v2/deployments", list_deployments, USER, None,
              list[DeploymentSummary], summary="List deployments the caller can read"),
    RouteSpec("GET", f"/api/v2/deployments/{MODEL}/replica-logs", replica_logs, READ, None,
              list[ReplicaLogOut], path_param("model_id"), query=(("tail", False,
                                                {"type": "integer"}),),
              summary="Recent log lines of each live replica"),
    RouteSpec("GET", f"/api/v2/deployments/{MODEL}", show_deployment, READ, None,
              DeploymentDetail, path_param("model_id"), summary="One deployment in detail"),
    RouteSpec("GET", "/api/v2/tasks/{task_id}", show_task, READ, None, TaskDetail,
              _task_model, summary="A task of any kind, with its events"),
    RouteSpec("GET", "/api/v2/changes", changes, USER, None, StreamInfo,
              query=(("timeout", False, {"type": "number", "exclusiveMinimum": 0,
                                         "maximum": MAX_STREAM_S}),),
              response_media="text/event-stream", summary="Live changes (text/event-stream)"),
]
