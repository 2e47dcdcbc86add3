"""POST /serve/{name}/feedback: upvotes, implicit upvotes and associations from users."""

from datetime import UTC

from aiohttp import web

from db import feedback
from edge.auth.locators import deployment_not_found, path_param
from edge.auth.rules import INFERENCE
from edge.guard import call_of
from edge.keys import PG
from edge.responses import json_response
from edge.route_spec import RouteSpec
from gateway.keys import GATEWAY
from schemas.bazaar import FeedbackRecorded, FeedbackRequest
from schemas.errors import Invalid


def _check(body: FeedbackRequest) -> None:
    if body.event == "associate" and not (body.source and body.target):
        raise Invalid("invalid request: an associate event needs source and target")
    if body.event != "associate" and not body.query:
        raise Invalid(f"invalid request: an {body.event} event needs a query")


async def record(request: web.Request) -> web.Response:
    """Record one feedback event for a serving deployment (public ones need no token)."""
    name = request.match_info["name"]
    route = request.app[GATEWAY].lookup(name)
    if route is None:
        raise deployment_not_found(name)
    body: FeedbackRequest = call_of(request).body
    _check(body)
    row = await feedback.add(request.app[PG], route.model_id, body.event, body.payload())
    stamp = row.created_at.astimezone(UTC).isoformat()
    return json_response(FeedbackRecorded(id=row.id, event=row.event, timestamp=stamp), 201)


ROUTES = [
    RouteSpec("POST", "/serve/{name}/feedback", record, INFERENCE, FeedbackRequest,
              FeedbackRecorded, path_param("name"), 201, summary="Record feedback"),
]
