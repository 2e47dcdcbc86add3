"""POST /serve/{name}/feedback: upvotes, implicit upvotes and associations from users."""

from datetime import UTC

from aiohttp import web

from schemas.bazaar import FeedbackRecorded, FeedbackRequest
from service.auth.guard import call_of
from service.auth.locators import deployment_not_found, path_param
from service.auth.rules import INFERENCE
from service.domain import feedback
from service.keys import GATEWAY, PG
from service.routes import RouteSpec
from service.web.responses import json_response


async def record(request: web.Request) -> web.Response:
    """Record one feedback event for a serving deployment (public ones need no token)."""
    name = request.match_info["name"]
    route = request.app[GATEWAY].lookup(name)
    if route is None:
        raise deployment_not_found(name)
    row = await feedback.record(request.app[PG], route.model_id, call_of(request).body)
    stamp = row.created_at.astimezone(UTC).isoformat()
    return json_response(FeedbackRecorded(id=row.id, event=row.event, timestamp=stamp), 201)


ROUTES = [
    RouteSpec("POST", "/serve/{name}/feedback", record, INFERENCE, FeedbackRequest,
              FeedbackRecorded, path_param("name"), 201, summary="Record feedback"),
]
